"""The upstream seam: one `Upstream` over our HTTP/1.1 client (direct) and aiohttp (through
proxies)."""
