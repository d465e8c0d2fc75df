// Package natsserver runs a NATS server with JetStream inside the current
// process: the dev stack embeds one, and every test gets a fresh one on a
// random port with its own storage folder.
package natsserver
