// Package dirlock lets one process at a time use a folder: `comfyfleet dev`
// takes <dir>/lock before it starts servers whose data lives in the folder,
// so a second one on the same folder fails with a message naming the first
// instead of two servers writing the same files.
//
// The lock is flock(2) on the file, which the kernel drops when the holding
// process exits however it exits, so there are no stale locks to clean up.
// The file holds the holder's process id and command line, for the message
// a second process gets; it is left in place (removing it would let two
// processes lock two different files of the same name). Locks are per open
// file, so a second Acquire in the same process fails as well.
//
// flock works on local file systems on Linux and macOS; some network file
// systems emulate it or refuse it, and then Acquire says so.
package dirlock
