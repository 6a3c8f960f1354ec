from llmgateway.cli import main

main()
