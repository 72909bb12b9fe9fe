package cache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/storefs/storefs/store"
)

// CacheInfo is a binary cache's nix-cache-info.
type CacheInfo struct {
	StoreDir      string
	WantMassQuery bool
	Priority      int // 0: not given
}

// String is the nix-cache-info text.
func (ci CacheInfo) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "StoreDir: %s\n", ci.StoreDir)
	if ci.WantMassQuery {
		b.WriteString("WantMassQuery: 1\n")
	}
	if ci.Priority != 0 {
		fmt.Fprintf(&b, "Priority: %d\n", ci.Priority)
	}
	return b.String()
}

// ParseCacheInfo reads a nix-cache-info; unknown keys are ignored, as Nix
// does, and a missing StoreDir is an error.
func ParseCacheInfo(r io.Reader) (CacheInfo, error) {
	var ci CacheInfo
	sc := bufio.NewScanner(io.LimitReader(r, 1<<16))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		switch k {
		case "StoreDir":
			ci.StoreDir = v
		case "WantMassQuery":
			ci.WantMassQuery = v == "1"
		case "Priority":
			ci.Priority, _ = strconv.Atoi(v)
		}
	}
	if err := sc.Err(); err != nil {
		return ci, err
	}
	if ci.StoreDir == "" {
		return ci, errors.New("nix-cache-info has no StoreDir")
	}
	return ci, nil
}

// narinfoKeys are the keys go-nix's parser knows; Nix ignores others (Guix
// adds "Signature", say), so ParseNarInfo drops them first.
var narinfoKeys = map[string]bool{
	"StorePath": true, "URL": true, "Compression": true, "FileHash": true, "FileSize": true,
	"NarHash": true, "NarSize": true, "References": true, "Deriver": true, "System": true,
	"Sig": true, "CA": true,
}

// ParseNarInfo reads a narinfo and checks what Nix requires of one: a
// StorePath, URL, NarHash and a NarSize above 0, well-formed store paths, no
// repeated References line, and for Compression "none" a FileHash and
// FileSize equal to NarHash and NarSize.
func ParseNarInfo(r io.Reader) (*narinfo.NarInfo, error) {
	b, err := io.ReadAll(io.LimitReader(r, 4<<20))
	if err != nil {
		return nil, err
	}
	var keep bytes.Buffer
	refLines := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		k, _, ok := strings.Cut(line, ": ")
		if !ok || !narinfoKeys[k] {
			continue
		}
		if k == "References" {
			refLines++
		}
		keep.WriteString(line + "\n")
	}
	if refLines > 1 {
		return nil, errors.New("corrupt narinfo: more than one References line")
	}
	ni, err := narinfo.Parse(&keep)
	if err != nil {
		return nil, fmt.Errorf("corrupt narinfo: %w", err)
	}
	switch {
	case ni.StorePath == "":
		return nil, errors.New("corrupt narinfo: no StorePath")
	case ni.URL == "":
		return nil, errors.New("corrupt narinfo: no URL")
	case ni.NarHash == nil:
		return nil, errors.New("corrupt narinfo: no NarHash")
	case ni.NarSize == 0:
		return nil, errors.New("corrupt narinfo: NarSize is 0")
	case ni.NarHash.Algo() != nixhash.SHA256:
		return nil, fmt.Errorf("narinfo of %s: NarHash %s is not a sha256", ni.StorePath, ni.NarHash)
	}
	if err := checkNarInfo(ni); err != nil {
		return nil, fmt.Errorf("corrupt narinfo: %w", err)
	}
	return ni, nil
}

// checkNarInfo is narinfo.Check without its assumption that store paths are
// under /nix/store.
func checkNarInfo(ni *narinfo.NarInfo) error {
	if _, _, err := store.ParseBaseName(path.Base(ni.StorePath)); err != nil || !strings.HasPrefix(ni.StorePath, "/") {
		return fmt.Errorf("invalid StorePath %q", ni.StorePath)
	}
	c := *ni
	c.StorePath = "/nix/store/" + path.Base(ni.StorePath)
	return c.Check()
}

// Fingerprint is what a narinfo's signatures sign:
// "1;<StorePath>;sha256:<nix32 NarHash>;<NarSize>;<references>", the
// references as full paths in storeDir, sorted, joined by ",".
func Fingerprint(storeDir string, ni *narinfo.NarInfo) string {
	refs := make([]string, len(ni.References))
	for i, r := range ni.References {
		refs[i] = storeDir + "/" + r
	}
	slices.Sort(refs)
	return "1;" + ni.StorePath + ";" + ni.NarHash.Format(nixhash.NixBase32, true) + ";" +
		strconv.FormatUint(ni.NarSize, 10) + ";" + strings.Join(refs, ",")
}

// Sign adds sk's signature of ni's fingerprint to ni.
func Sign(storeDir string, ni *narinfo.NarInfo, sk signature.SecretKey) error {
	sig, err := sk.Sign(nil, Fingerprint(storeDir, ni))
	if err != nil {
		return err
	}
	ni.Signatures = append(ni.Signatures, sig)
	return nil
}

// Verified reports whether one of ni's signatures is valid for one of keys.
func Verified(storeDir string, ni *narinfo.NarInfo, keys []signature.PublicKey) bool {
	return signature.VerifyFirst(Fingerprint(storeDir, ni), ni.Signatures, keys)
}

// NewNarInfo is the narinfo of a valid item, without the file fields (URL,
// Compression, FileHash, FileSize) that depend on how its NAR is offered.
func NewNarInfo(in *store.Info) (*narinfo.NarInfo, error) {
	h, err := nixhash.ParseAny(in.NarHash, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: bad NAR hash %q: %w", in.Path, in.NarHash, err)
	}
	ni := &narinfo.NarInfo{
		StorePath: in.Path,
		NarHash:   nixhash.MustNewHashWithEncoding(h.Algo(), h.Digest(), nixhash.NixBase32, true),
		NarSize:   uint64(in.NarSize),
		CA:        in.CA,
	}
	for _, r := range in.References {
		ni.References = append(ni.References, path.Base(r))
	}
	slices.Sort(ni.References)
	if in.Deriver != "" {
		ni.Deriver = path.Base(in.Deriver)
	}
	return ni, nil
}

// narHash32 is the nix32 digest of ni's NarHash.
func narHash32(ni *narinfo.NarInfo) string { return ni.NarHash.Format(nixhash.NixBase32, false) }

// hashPart is the 32-character hash part of a store path.
func hashPart(p string) string {
	b := path.Base(p)
	if len(b) < store.HashPartLen {
		return b
	}
	return b[:store.HashPartLen]
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
