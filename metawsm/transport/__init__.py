"""Transport: how forum messages travel between actors (Redis Streams) and the Redis we may own."""
