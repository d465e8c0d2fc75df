// Package redisserver runs a Redis-protocol server for the dev stack whose
// data lives in a folder and survives a restart of `comfyfleet dev`, so the
// job records in Redis stay in step with the jobs JetStream keeps on disk.
//
// Start runs one of two backends, the first that fits unless
// Config.Backend names one:
//
//   - redis-server: when a redis-server binary is found (Config.RedisServer,
//     else PATH), it runs as a child process on 127.0.0.1 with an
//     append-only file under Config.Dir (appendonly yes, appendfsync
//     everysec, RDB snapshots off). The child is in its own process group,
//     so a Ctrl-C in the terminal reaches only the parent, which stops it
//     in order; and it gets SIGTERM when the parent dies (Linux
//     Pdeathsig), so a killed parent leaves no orphan.
//   - miniredis: otherwise, github.com/alicebob/miniredis/v2 in this
//     process, with TTLs running on the wall clock as in Redis (miniredis
//     on its own moves them only on FastForward), and a snapshot file
//     <Dir>/miniredis.json written atomically once a second while keys
//     change and at Stop, and loaded at Start. It keeps strings, hashes,
//     lists, sets and sorted sets (scores exact) in databases 0 to 15, and
//     each key's expiry as an absolute time, so time spent down counts and
//     keys that expired meanwhile are gone. Other types (streams,
//     HyperLogLogs) and per-field hash TTLs are not kept. A snapshot that
//     cannot be read is an error naming the file, never an empty start.
//
// What survives what:
//
//   - A clean Stop, then Start on the same Dir: every key, value and TTL,
//     with either backend.
//   - SIGKILL of the parent (or a crash): redis-server gets SIGTERM from
//     the kernel and writes out its append-only file, so everything
//     survives; if redis-server itself is killed or the machine stops, up
//     to about a second of writes is lost (appendfsync everysec). miniredis
//     dies with the process: the writes since the last snapshot, up to
//     about a second, are lost.
//
// The two backends do not read each other's files: a folder written by one
// starts empty under the other (Start logs a warning naming the file).
package redisserver
