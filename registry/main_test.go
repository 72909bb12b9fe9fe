package registry_test

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/storefs/storefs/registry"
	"github.com/storefs/storefs/registry/registrytest"
)

// Environment of a child process started by TestMultiProcessRegister (the
// re-exec pattern: the test binary runs itself with these variables set).
const (
	envChild    = "REGISTRY_TEST_CHILD"    // registry file to register into
	envChildID  = "REGISTRY_TEST_CHILD_ID" // distinguishes the children's paths
	envChildN   = "REGISTRY_TEST_CHILD_N"  // how many paths to register
	envChildRef = "REGISTRY_TEST_CHILD_REF"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envChild); path != "" {
		if err := child(path); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child registers N paths, one per Register call, into the registry at path;
// every third one refers to the base path named by envChildRef.
func child(path string) error {
	id := os.Getenv(envChildID)
	n, err := strconv.Atoi(os.Getenv(envChildN))
	if err != nil {
		return fmt.Errorf("%s: %v", envChildN, err)
	}
	base := os.Getenv(envChildRef)
	r, err := registry.Open(path, registry.Options{})
	if err != nil {
		return err
	}
	for i := range n {
		name := childPath(id, i)
		var refs []string
		if i%3 == 0 {
			refs = []string{base}
		}
		if i%5 == 0 {
			refs = append(refs, name) // a self-reference
		}
		if _, err := r.Register(registrytest.Reg(registrytest.Info(name, refs...))); err != nil {
			return fmt.Errorf("Register(%s): %w", name, err)
		}
		// A read between writes takes the shared lock.
		if ok, err := r.IsValid(name); err != nil || !ok {
			return fmt.Errorf("IsValid(%s) = %v, %v; want true, nil", name, ok, err)
		}
	}
	return nil
}

func childPath(id string, i int) string {
	return registrytest.Name(fmt.Sprintf("child%s-item%03d", id, i))
}
