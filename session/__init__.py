"""Who is talking: session identity, prefix block hashes, the session store (memory | Redis)."""
