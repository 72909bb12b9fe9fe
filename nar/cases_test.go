package nar

import (
	"bytes"
	"encoding/binary"
)

// Hand-built archives, valid and malformed, mirroring the shared oracle
// script make-nar-cases (whose Nix 2.8 verdicts are in
// reference/nix-oracles.md §3.3) so the tests need nothing outside the
// repository. The builders do no validation on purpose.

// tok is str(s): u64le length, bytes, zero padding to a multiple of 8.
func tok(s string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func toks(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = append(b, tok(s)...)
	}
	return b
}

func regNode(data string, exec bool) []byte {
	b := toks("(", "type", "regular")
	if exec {
		b = append(b, toks("executable", "")...)
	}
	return cat(b, toks("contents", data, ")"))
}

func symNode(target string) []byte { return toks("(", "type", "symlink", "target", target, ")") }

type ent struct {
	name string
	node []byte
}

func dirNode(entries ...ent) []byte {
	b := toks("(", "type", "directory")
	for _, e := range entries {
		b = cat(b, toks("entry", "(", "name", e.name, "node"), e.node, tok(")"))
	}
	return append(b, tok(")")...)
}

func narOf(node []byte) []byte { return cat(tok(Magic), node) }

func corrupt(b []byte, at int, v byte) []byte {
	b = bytes.Clone(b)
	b[at] = v
	return b
}

type narCase struct {
	name string
	data []byte
	ok   bool
}

// narCases returns the valid ("ok-*") and malformed cases.
func narCases() []narCase {
	abc := narOf(regNode("abc", false))
	dirA := narOf(dirNode(ent{"a", regNode("abc", false)}))
	return []narCase{
		{"ok-dir", narOf(dirNode(ent{"a", regNode("x", false)}, ent{"b", regNode("y", false)})), true},
		{"ok-exec", narOf(regNode("#!/bin/sh\n", true)), true},
		{"ok-symlink", narOf(symNode("target")), true},
		{"ok-empty-dir", narOf(dirNode()), true},
		{"ok-empty-file", narOf(regNode("", false)), true},
		{"ok-case-only-names", narOf(dirNode(ent{"A", regNode("x", false)}, ent{"a", regNode("y", false)})), true},
		{"ok-sym-slash-target", narOf(symNode("/")), true},

		{"unsorted-entries", narOf(dirNode(ent{"b", regNode("x", false)}, ent{"a", regNode("y", false)})), false},
		{"unsorted-nested", narOf(dirNode(ent{"x", dirNode(ent{"b", regNode("1", false)}, ent{"a", regNode("2", false)})})), false},
		{"duplicate-entry", narOf(dirNode(ent{"a", regNode("x", false)}, ent{"a", regNode("y", false)})), false},
		{"name-dot", narOf(dirNode(ent{".", regNode("x", false)})), false},
		{"name-dotdot", narOf(dirNode(ent{"..", regNode("x", false)})), false},
		{"name-slash", narOf(dirNode(ent{"a/b", regNode("x", false)})), false},
		{"name-empty", narOf(dirNode(ent{"", regNode("x", false)})), false},
		{"name-nul", narOf(dirNode(ent{"a\x00b", regNode("x", false)})), false},
		{"bad-magic", cat(tok("nix-archive-2"), regNode("x", false)), false},
		{"trailing-garbage", cat(narOf(regNode("x", false)), []byte("garbage!")), false},
		{"truncated", func() []byte { b := narOf(regNode("hello", false)); return b[:len(b)-8] }(), false},
		{"executable-marker-nonempty", narOf(toks("(", "type", "regular", "executable", "x", "contents", "", ")")), false},
		{"executable-after-contents", narOf(toks("(", "type", "regular", "contents", "", "executable", "", ")")), false},
		{"symlink-empty-target", narOf(symNode("")), false},
		{"unknown-type", narOf(toks("(", "type", "fifo", ")")), false},
		{"nonzero-padding-contents", corrupt(abc, bytes.Index(abc, []byte("abc"))+3, 1), false},
		{"nonzero-padding-name", corrupt(dirA, bytes.Index(dirA, toks("name", "a"))+len(tok("name"))+9, 7), false},
	}
}

// multiNAR is a valid archive exercising every node kind, nesting, padding
// and the executable flag.
func multiNAR() []byte {
	return narOf(dirNode(
		ent{"a", regNode("hello\n", false)},
		ent{"b", dirNode(
			ent{"c", regNode("#!/bin/sh\necho hi\n", true)},
			ent{"d", symNode("../a")},
			ent{"e", dirNode()},
		)},
		ent{"eight", regNode("12345678", false)},
		ent{"z", regNode("", true)},
	))
}
