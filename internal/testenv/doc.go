// Package testenv gives tests the real servers they talk to: a fresh
// in-process NATS server with JetStream per test, and the Redis server named
// by REDIS_URL (default redis://127.0.0.1:6379/0) with a key prefix of the
// test's own; a test's own redis-server with TLS (StartRedisTLS), or a
// master with replicas and sentinels (StartRedisSentinel). A test whose
// server is missing fails; it never skips. It also
// runs the test binary again as a helper process, for tests about what
// happens across processes.
package testenv
