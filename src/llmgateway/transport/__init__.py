"""The upstream seam: the `Upstream` protocol, and `HttpUpstream` over our HTTP/1.1 client
(direct) and aiohttp (through proxies)."""
