package main

// This file holds how verbs take secrets (API tokens, CHAP secrets)
// without putting them on the command line, where every local user sees
// them in the process list: from a file, from standard input, or typed at
// a prompt that does not echo, as storage administrators know from their
// arrays' CLIs.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// console is the user's side of a verb: standard input (a secret file
// named "-"), and a prompt without echo when standard input is a
// terminal.
type console struct {
	stdin io.Reader
	// readSecret prints a prompt and reads a line without echoing it;
	// nil when standard input is not a terminal (a script, a pipe).
	readSecret func(prompt string) (string, error)
	// stdinTaken names the flag that read standard input already.
	stdinTaken string
}

// stdConsole is the process's console: standard input, and prompts on
// standard error (standard output stays the verb's answer).
func stdConsole() *console {
	c := &console{stdin: os.Stdin}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		c.readSecret = func(prompt string) (string, error) { return readNoEcho(os.Stdin, os.Stderr, prompt) }
	}
	return c
}

// readNoEcho prints prompt to out and reads a line from the terminal tty
// with echo turned off, and restored also on error. An interrupt (Ctrl-C,
// or SIGTERM) ends the prompt at once with echo back on; the goroutine
// still blocked reading the terminal then ends with the process, which
// the error stops.
func readNoEcho(tty *os.File, out io.Writer, prompt string) (string, error) {
	fd := int(tty.Fd())
	state, err := term.GetState(fd)
	if err != nil {
		return "", fmt.Errorf("read from the terminal: %w", err)
	}
	intr := make(chan os.Signal, 1)
	signal.Notify(intr, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(intr)
	type line struct {
		b   []byte
		err error
	}
	got := make(chan line, 1)
	fmt.Fprint(out, prompt)
	go func() {
		b, err := term.ReadPassword(fd)
		got <- line{b, err}
	}()
	select {
	case l := <-got:
		fmt.Fprintln(out) // the user's Enter was not echoed
		if l.err != nil {
			return "", fmt.Errorf("read from the terminal: %w", l.err)
		}
		return string(l.b), nil
	case <-intr:
		_ = term.Restore(fd, state)
		fmt.Fprintln(out)
		return "", errors.New("interrupted: nothing was changed")
	}
}

// maxSecretFile bounds what a secret file may hold.
const maxSecretFile = 64 << 10

// secret is a secret a verb takes: --NAME VALUE on the command line
// (kept for scripts; visible to other local users while metro runs),
// --NAME-file FILE ("-": standard input), the environment variables ENV
// and ENV_FILE when env is set, or a prompt when standard input is a
// terminal.
type secret struct {
	name string // the flag, e.g. "chap-secret"
	what string // what it is, for help, prompts and errors
	env  string // environment variable, e.g. "METRO_TOKEN"; "" for none

	fs          *pflag.FlagSet
	value, file string
}

// add defines the secret's flags in fs.
func (s *secret) add(fs *pflag.FlagSet) {
	s.fs = fs
	env, envFile := "", ""
	if s.env != "" {
		env, envFile = " (env "+s.env+")", " (env "+s.env+"_FILE)"
	}
	fs.StringVar(&s.value, s.name, "", s.what+env+"; other local users can see it on the command line: prefer --"+s.name+"-file")
	fs.StringVar(&s.file, s.name+"-file", "", "read "+s.what+" from FILE, - for standard input"+envFile)
}

// given reports whether the secret's flags were given.
func (s *secret) given() bool { return s.fs.Changed(s.name) || s.fs.Changed(s.name+"-file") }

// get returns the secret from its flags, then its environment variables,
// then a prompt on a terminal (typed twice when confirm, for a secret
// being set). ok is false when none of them has it.
func (s *secret) get(con *console, confirm bool) (v string, ok bool, err error) {
	if s.fs.Changed(s.name) && s.fs.Changed(s.name+"-file") {
		return "", false, fmt.Errorf("give --%s or --%s, not both", s.name, s.name+"-file")
	}
	switch {
	case s.fs.Changed(s.name):
		return s.value, true, nil
	case s.fs.Changed(s.name + "-file"):
		v, err := con.readFile("--"+s.name+"-file", s.file)
		return v, err == nil, err
	}
	if s.env != "" {
		v, fromEnv := os.LookupEnv(s.env)
		f, fromFile := os.LookupEnv(s.env + "_FILE")
		switch {
		case fromEnv && v != "" && fromFile && f != "":
			return "", false, fmt.Errorf("both %s and %s_FILE are set: unset one", s.env, s.env)
		case fromEnv && v != "":
			return v, true, nil
		case fromFile && f != "":
			v, err := con.readFile(s.env+"_FILE", f)
			return v, err == nil, err
		}
	}
	if con.readSecret == nil {
		return "", false, nil
	}
	v, err = con.readSecret("Enter " + s.what + ": ")
	if err != nil {
		return "", false, err
	}
	if confirm {
		again, err := con.readSecret("Retype " + s.what + ": ")
		if err != nil {
			return "", false, err
		}
		if again != v {
			return "", false, errors.New("the two entries differ: nothing was changed; run the command again")
		}
	}
	return v, true, nil
}

// readFile reads a secret from the file name (standard input for "-")
// given by source (a flag or variable, for errors): its content without
// the final line break. The content is never shown in errors.
func (con *console) readFile(source, name string) (string, error) {
	var r io.Reader
	if name == "-" {
		if con.stdinTaken != "" {
			return "", fmt.Errorf("%s -: standard input is already read by %s: give one of them a file", source, con.stdinTaken)
		}
		con.stdinTaken = source + " -"
		r = con.stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return "", fmt.Errorf("%s: %w", source, err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", source, name, err)
	}
	if len(data) > maxSecretFile {
		return "", fmt.Errorf("%s %s: more than %d bytes: not a secret file", source, name, maxSecretFile)
	}
	data = bytes.TrimSuffix(bytes.TrimSuffix(data, []byte("\n")), []byte("\r"))
	switch {
	case len(data) == 0:
		return "", fmt.Errorf("%s %s: empty: put the secret in it, on one line", source, name)
	case bytes.ContainsAny(data, "\r\n"):
		return "", fmt.Errorf("%s %s: more than one line: put only the secret in it", source, name)
	}
	return string(data), nil
}
