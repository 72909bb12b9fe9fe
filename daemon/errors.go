package daemon

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/storefs/storefs/nar"
	"github.com/storefs/storefs/store"
)

// Error kinds on the wire: the client maps them back to the sentinels the
// CLI turns into exit codes.
const (
	kindNotValid  = "not-valid"
	kindLocked    = "locked"
	kindBadInput  = "bad-input"
	kindForbidden = "forbidden"
	kindFailed    = "failed"
)

// apiError is the JSON body of every error response.
type apiError struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
}

func classify(err error) (int, string) {
	var ne *nar.Error
	switch {
	case errors.Is(err, store.ErrNotValid):
		return http.StatusNotFound, kindNotValid
	case errors.Is(err, store.ErrLocked):
		return http.StatusServiceUnavailable, kindLocked
	case errors.As(err, &ne), errors.Is(err, store.ErrBadInput), errors.Is(err, store.ErrUnsupported):
		return http.StatusBadRequest, kindBadInput
	}
	return http.StatusInternalServerError, kindFailed
}

// RemoteError is an error reported by the daemon. Its text is the daemon's
// error text, so the CLI prints the same message with or without a daemon.
type RemoteError struct {
	Msg  string
	Kind string
}

func (e *RemoteError) Error() string { return e.Msg }

// Is maps the wire kinds to the store's sentinels.
func (e *RemoteError) Is(target error) bool {
	switch e.Kind {
	case kindNotValid:
		return target == store.ErrNotValid
	case kindLocked:
		return target == store.ErrLocked
	case kindBadInput:
		return target == store.ErrBadInput
	case kindForbidden:
		return target == ErrForbidden
	}
	return false
}

// ErrForbidden: the daemon refused this user.
var ErrForbidden = errors.New("permission denied by the storefs daemon")

// ErrNoDaemon: no daemon serves the store (no socket, or a stale one).
var ErrNoDaemon = errors.New("no storefs daemon")

func forbidden(uid uint32, owner int) *apiError {
	return &apiError{Error: fmt.Sprintf("permission denied: uid %d may not use this store's daemon (it serves uid %d)", uid, owner), Kind: kindForbidden}
}
