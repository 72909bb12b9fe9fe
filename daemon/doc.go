// Package daemon lets one process own a store and serve it to the CLI.
//
// bbolt allows one read-write process per database file. Like guix-daemon,
// a running `storefs daemon` (or `storefs mount`) opens the store, holds its
// registry, and serves every other storefs command on <state>/daemon.sock;
// without a daemon the CLI opens the store itself.
//
// The protocol is HTTP/1.1 with JSON over the unix socket (docs/API.md):
// NARs stream in request and response bodies, never buffered whole, and an
// error after a streamed response has begun travels in the Storefs-Error
// trailer. Each request gets its own set of temp roots, released when it
// ends; a client may open a session (POST /v1/session) whose temp roots live
// until the client disconnects, so temp roots never outlive their client.
// Registrations of concurrent requests share commits (bbolt Batch), while
// the hashing and copying of each request run in its own goroutine.
//
// Access: the socket is created 0600 (0660 and the daemon's group with
// Options.Group), and every connection's peer credentials (SO_PEERCRED) are
// checked: the store's owner and root may connect, and members of the group
// when one is given; anyone else gets 403 with a clear message.
package daemon
