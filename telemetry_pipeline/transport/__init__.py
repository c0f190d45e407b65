"""HTTP as every outside call makes it: timeouts, retries with backoff that honour Retry-After."""
