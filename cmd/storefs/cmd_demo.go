package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/storefs/storefs/compare"
	"github.com/storefs/storefs/fs"
	"github.com/storefs/storefs/nsrun"
	"github.com/storefs/storefs/store"
)

// The demo's sample package, written to a temp dir and added for real.
var demoFiles = []struct {
	rel, content string
	mode         os.FileMode
	link         string
}{
	{rel: "bin/hello", content: "#!/bin/sh\necho 'Hello from the store!'\n", mode: 0o755},
	{rel: "share/doc/hello/README", content: "A tiny package added by `storefs demo`.\n", mode: 0o644},
	{rel: "share/doc/hello/NEWS", content: "Same bytes as README in another item: stored once in blob mode.\n", mode: 0o644},
	{rel: "lib/hello.conf", link: "../share/doc/hello/README"},
}

func newDemoCommand(g *globals) *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Create a store in a temp dir (or --state), add real files, list and check them",
		Long: `The main job on an embedded default: create a store (in a new temp dir unless
--state or STOREFS_STATE is given), add a small sample package and the storefs
binary itself, then list the store, show an item, its closure and a file, and
verify every NAR hash. The store is left in place for you to explore.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkMode(mode); err != nil {
				return err
			}
			ctx := cmd.Context()
			state := g.state
			if state == "" {
				state = os.Getenv("STOREFS_STATE")
			}
			if state == "" {
				d, err := os.MkdirTemp("", "storefs-demo-")
				if err != nil {
					return err
				}
				state = d
			}
			out := g.stdout
			if err := refuseServed(state); err != nil {
				return err
			}
			s, err := store.Init(state, store.InitOptions{Mode: store.Mode(mode)}, g.options())
			if err != nil {
				return err
			}
			defer s.Close()
			fmt.Fprintf(out, "$ storefs --state %s init --mode %s\n", state, s.Mode())

			src, err := os.MkdirTemp("", "storefs-demo-src-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(src)
			pkg := filepath.Join(src, "hello-1.0")
			for _, f := range demoFiles {
				p := filepath.Join(pkg, f.rel)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					return err
				}
				if f.link != "" {
					err = os.Symlink(f.link, p)
				} else {
					err = os.WriteFile(p, []byte(f.content), f.mode)
				}
				if err != nil {
					return err
				}
			}
			hello, err := s.Add(ctx, pkg, store.AddOptions{})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs add %s\n%s\n", pkg, hello)

			exe, err := os.Executable()
			if err != nil {
				return err
			}
			bin, err := s.Add(ctx, exe, store.AddOptions{Name: "storefs"})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs add --name storefs %s\n%s\n", exe, bin)

			notes := filepath.Join(src, "notes")
			if err := os.WriteFile(notes, []byte(demoFiles[2].content), 0o644); err != nil {
				return err
			}
			withRef, err := s.Add(ctx, notes, store.AddOptions{Refs: []string{hello}})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs add --ref %s %s\n%s\n", hello, notes, withRef)

			fmt.Fprintf(out, "$ storefs ls\n")
			if err := s.List(func(p string) bool { fmt.Fprintln(out, p); return true }); err != nil {
				return err
			}
			in, err := s.Info(withRef)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs info %s\npath: %s\nnarHash: %s\nnarSize: %d\nreferences: %s\n", withRef, in.Path, in.NarHash, in.NarSize, strings.Join(in.References, " "))
			c, err := s.Closure([]string{withRef})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs closure %s\n", withRef)
			for _, p := range c {
				fmt.Fprintln(out, p)
			}
			fmt.Fprintf(out, "$ storefs cat %s/bin/hello\n", hello)
			if err := s.Cat(ctx, out, hello+"/bin/hello"); err != nil {
				return err
			}
			h := sha256.New()
			if err := s.Export(ctx, h, bin); err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs export %s | sha256sum\n%x  -\n", bin, h.Sum(nil))
			rep, err := s.Verify(ctx, store.VerifyOptions{Contents: true})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "$ storefs verify --contents\nchecked %d paths and their contents: %d problem(s)\n", rep.Paths, len(rep.Problems))
			if len(rep.Problems) > 0 {
				return problemsError{len(rep.Problems)}
			}
			if err := demoCompare(g, src, exe, pkg, notes); err != nil {
				return err
			}
			if s.Mode().Mounted() {
				if err := demoMount(g, s, hello); err != nil {
					return err
				}
			}
			if err := demoRun(g, s, hello); err != nil {
				return err
			}
			fmt.Fprintf(out, "\nThe store is in %s; try: storefs --state %s ls\n", state, state)
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", string(store.ModeBlob), "blob, chunk (blob with large files split into content-defined chunks) or disk")
	return cmd
}

// demoCompare compares the strategies on the sample items and two
// versions of a "library" (the first MiB of the storefs binary, then the
// same with one byte inserted in its middle, as a rebuild changes a
// little): the content-defined chunks of chunk mode share most of the two.
func demoCompare(g *globals, src, exe string, items ...string) error {
	b, err := os.ReadFile(exe)
	if err != nil {
		return err
	}
	b = b[:min(len(b), 1<<20)]
	v2 := append(append(append([]byte{}, b[:len(b)/2]...), '!'), b[len(b)/2:]...)
	paths := items
	for _, v := range []struct {
		name string
		data []byte
	}{{"libhello-1.0", b}, {"libhello-1.1", v2}} {
		dir := filepath.Join(src, v.name, "lib")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "libhello.so"), v.data, 0o755); err != nil {
			return err
		}
		paths = append(paths, filepath.Dir(dir))
	}
	out := g.stdout
	fmt.Fprintf(out, "\n$ storefs compare %s\n", strings.Join(paths, " "))
	res, err := compare.Build(context.Background(), paths, compare.Options{Logger: g.log})
	if err != nil {
		return err
	}
	return printCompareTable(out, res)
}

// demoRun shows the store at its store dir through storefs run, where
// user namespaces (or root) and, for a mounted mode, FUSE allow it.
func demoRun(g *globals, s *store.Store, hello string) error {
	out := g.stdout
	if why := fuseUnavailable(); why != "" && s.Mode().Mounted() {
		fmt.Fprintf(out, "\n(skipping storefs run: %s)\n", why)
		return nil
	}
	scratch, release, err := s.NewScratch()
	if err != nil {
		return err
	}
	defer release()
	script := fmt.Sprintf("ls %s && %s/bin/hello", s.StoreDir(), hello)
	fmt.Fprintf(out, "\n$ storefs run -- sh -c '%s'\n", script)
	code, err := nsrun.Run(&nsrun.Config{
		State: s.StateDir(), StoreDir: s.StoreDir(), Mode: string(s.Mode()), Scratch: scratch,
		Argv: []string{"sh", "-c", script}, Dir: "/", UID: os.Getuid(), GID: os.Getgid(),
		Stdout: out, Stderr: out,
	})
	if err != nil {
		fmt.Fprintf(out, "(storefs run is not possible here: %v)\n", err)
		return nil
	}
	if code != 0 {
		return fmt.Errorf("demo: storefs run: exit status %d", code)
	}
	return nil
}

// demoMount mounts the demo store, shows it and unmounts it, when FUSE is
// available (it says why not otherwise).
func demoMount(g *globals, s *store.Store, hello string) error {
	out := g.stdout
	if why := fuseUnavailable(); why != "" {
		fmt.Fprintf(out, "\n(skipping the mount: %s)\n", why)
		return nil
	}
	mp, err := os.MkdirTemp("", "storefs-demo-mnt-")
	if err != nil {
		return err
	}
	defer os.Remove(mp)
	root := fs.NewRoot(s.Registry(), s.Blobs(), s.StoreDir(), fs.Options{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Passthrough: os.Geteuid() == 0, Chunks: s.Chunks()})
	srv, err := fs.Mount(mp, root, fs.MountOptions{})
	if err != nil {
		fmt.Fprintf(out, "\n(skipping the mount: %v)\n", err)
		return nil
	}
	defer fs.Stop(srv, mp)
	fmt.Fprintf(out, "$ storefs mount %s &\n$ ls -l %s\n", mp, mp)
	ents, err := os.ReadDir(mp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s %10d %s %s\n", fi.Mode(), fi.Size(), fi.ModTime().UTC().Format("2006-01-02 15:04:05"), e.Name())
	}
	script := filepath.Join(mp, filepath.Base(hello), "bin", "hello")
	b, err := os.ReadFile(script)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "$ cat %s\n%s", script, b)
	fmt.Fprintf(out, "$ umount %s\n", mp)
	return nil
}

// fuseUnavailable says why this process cannot mount, or "".
func fuseUnavailable() string {
	if why := fs.DeviceProblem(); why != "" {
		return why
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err := exec.LookPath("fusermount"); err != nil {
				return "fusermount3 is not installed"
			}
		}
	}
	return ""
}
