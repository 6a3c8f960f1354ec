from llmgateway.cli.main import main

main()
