"""The web console at `/admin`: pages over the store, served by the Keeper (never loaded by a
gateway process). `console.app` builds it; `console.listener` serves it."""
