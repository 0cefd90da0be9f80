package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// allCommands lists every command of the tree under root, root included,
// as the arguments that name it.
func allCommands(root *cobra.Command) [][]string {
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		out = append(out, path)
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string(nil), path...), sub.Name()))
		}
	}
	walk(root, nil)
	return out
}

// TestHelpNeverShowsTheToken runs every verb's --help, and every verb
// with a flag it does not know, with METRO_TOKEN (and the other
// variables) set: the token never appears, neither as a flag default nor
// in an error.
func TestHelpNeverShowsTheToken(t *testing.T) {
	const token = "tok-b6f1c0ffee5ecret0123456789"
	c := newCLI(t)
	t.Setenv("METRO_TOKEN", token)
	t.Setenv("METRO_API", c.url)
	t.Setenv("METRO_CA", "")
	t.Setenv("METRO_PPROF", "127.0.0.1:6060")
	cmds := allCommands(newRoot())
	if len(cmds) < 30 {
		t.Fatalf("only %d commands found", len(cmds))
	}
	for _, path := range cmds {
		for _, extra := range [][]string{{"--help"}, {"--no-such-flag"}} {
			args := append(append([]string(nil), path...), extra...)
			root := newRootOn(&console{stdin: strings.NewReader("")})
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(args)
			err := root.Execute()
			text := out.String()
			if err != nil {
				text += err.Error()
			}
			if strings.Contains(text, token) {
				t.Errorf("metro %s shows METRO_TOKEN:\n%s", strings.Join(args, " "), text)
			}
			if extra[0] == "--help" && (err != nil || !strings.Contains(text, "Usage")) {
				t.Errorf("metro %s: %v\n%s", strings.Join(args, " "), err, text)
			}
		}
	}
	// The token from the environment is still used.
	t.Setenv("METRO_TOKEN", testToken)
	if _, err := c.run("pod", "list"); err != nil {
		t.Fatalf("pod list with METRO_TOKEN: %v", err)
	}
	// And a wrong one gets the server's refusal, which does not show it.
	t.Setenv("METRO_TOKEN", token)
	if _, err := c.run("vol", "list"); err == nil || statusCode(err) != 401 || strings.Contains(err.Error(), token) {
		t.Fatalf("vol list with a wrong METRO_TOKEN: %v", err)
	}
}

// writeSecretFile writes content into a 0600 file in the test's
// directory and returns its path.
func writeSecretFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSecretFiles sets CHAP secrets and the API token from files and
// standard input, and checks the mistakes are refused without showing
// the secret.
func TestSecretFiles(t *testing.T) {
	c := newCLI(t)
	const hostSecret, arraySecret = "host-secret-0123", "array-secret-4567"
	hostFile := writeSecretFile(t, "host", hostSecret+"\n")
	arrayFile := writeSecretFile(t, "array", arraySecret+"\r\n")
	c.ok("host", "create", "--chap-user", "hu", "--chap-secret-file", hostFile,
		"--target-chap-user", "tu", "--target-chap-secret-file", arrayFile, "h1")
	h := c.arr.cat.View().Hosts["h1"]
	if h == nil || h.CHAPUser != "hu" || h.CHAPSecret != hostSecret || h.TargetCHAPUser != "tu" || h.TargetCHAPSecret != arraySecret {
		t.Fatalf("host made from secret files: %+v", h)
	}

	c.con = &console{stdin: strings.NewReader(hostSecret + "-new\n")}
	c.ok("host", "setattr", "--chap-user", "hu2", "--chap-secret-file", "-", "h1")
	if h := c.arr.cat.View().Hosts["h1"]; h.CHAPUser != "hu2" || h.CHAPSecret != hostSecret+"-new" {
		t.Fatalf("CHAP secret from standard input: %+v", h)
	}
	c.ok("host", "setattr", "--target-chap-user", "", "h1")
	if h := c.arr.cat.View().Hosts["h1"]; h.TargetCHAPUser != "" || h.TargetCHAPSecret != "" {
		t.Fatalf("--target-chap-user \"\" did not turn mutual CHAP off: %+v", h)
	}

	empty := writeSecretFile(t, "empty", "\n")
	lines := writeSecretFile(t, "lines", hostSecret+"\n"+arraySecret+"\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--chap-user", "u", "--chap-secret-file", "-", "--target-chap-user", "t", "--target-chap-secret-file", "-"}, "already read"},
		{[]string{"--chap-user", "u", "--chap-secret", hostSecret, "--chap-secret-file", hostFile}, "not both"},
		{[]string{"--chap-user", "u", "--chap-secret-file", empty}, "empty"},
		{[]string{"--chap-user", "u", "--chap-secret-file", lines}, "more than one line"},
		{[]string{"--chap-user", "u", "--chap-secret-file", filepath.Join(t.TempDir(), "none")}, "no such file"},
		{[]string{"--chap-secret-file", hostFile}, "needs --chap-user"},
		{[]string{"--chap-user", "u"}, "needs its secret"},
	} {
		c.con = &console{stdin: strings.NewReader(hostSecret + "\n")}
		err := c.fail(append(append([]string{"host", "create"}, tc.args...), "h2"), tc.want)
		if strings.Contains(err.Error(), hostSecret) || strings.Contains(err.Error(), arraySecret) {
			t.Errorf("%v: the error shows a secret: %v", tc.args, err)
		}
	}
	if c.arr.cat.View().Hosts["h2"] != nil {
		t.Fatal("a refused host create made the host")
	}

	// The API token from --token-file, METRO_TOKEN_FILE or standard input.
	tokenFile := writeSecretFile(t, "token", testToken+"\n")
	if _, err := c.run("--api", c.url, "--token-file", tokenFile, "pod", "list"); err != nil {
		t.Fatalf("--token-file: %v", err)
	}
	c.con = &console{stdin: strings.NewReader(testToken + "\n")}
	if _, err := c.run("--api", c.url, "--token-file", "-", "pod", "list"); err != nil {
		t.Fatalf("--token-file -: %v", err)
	}
	t.Setenv("METRO_TOKEN_FILE", tokenFile)
	if _, err := c.run("--api", c.url, "pod", "list"); err != nil {
		t.Fatalf("METRO_TOKEN_FILE: %v", err)
	}
	t.Setenv("METRO_TOKEN", "other-token")
	if _, err := c.run("--api", c.url, "pod", "list"); err == nil || !strings.Contains(err.Error(), "unset one") {
		t.Fatalf("METRO_TOKEN and METRO_TOKEN_FILE both set: %v", err)
	}
	if _, err := c.run("--api", c.url, "--token", testToken, "--token-file", tokenFile, "pod", "list"); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("--token and --token-file: %v", err)
	}
}

// fakeTerminal answers prompts from a list and records them.
type fakeTerminal struct {
	answers []string
	prompts []string
}

func (f *fakeTerminal) console() *console {
	return &console{stdin: strings.NewReader(""), readSecret: func(prompt string) (string, error) {
		f.prompts = append(f.prompts, prompt)
		if len(f.answers) == 0 {
			return "", io.EOF
		}
		a := f.answers[0]
		f.answers = f.answers[1:]
		return a, nil
	}}
}

// TestSecretPrompts: on a terminal, a CHAP user without its secret asks
// for it twice, the API token and the peer's token once; different
// entries change nothing.
func TestSecretPrompts(t *testing.T) {
	c := newCLI(t)
	const secret = "typed-secret-0123"
	term := &fakeTerminal{answers: []string{secret, secret}}
	c.con = term.console()
	c.ok("host", "create", "--chap-user", "hu", "h1")
	if h := c.arr.cat.View().Hosts["h1"]; h == nil || h.CHAPSecret != secret {
		t.Fatalf("host from a prompted secret: %+v", h)
	}
	if len(term.prompts) != 2 || !strings.Contains(term.prompts[0], "CHAP secret") || !strings.Contains(term.prompts[1], "Retype") {
		t.Fatalf("prompts %q, want the CHAP secret asked for twice", term.prompts)
	}

	term = &fakeTerminal{answers: []string{secret, secret + "x"}}
	c.con = term.console()
	err := c.fail([]string{"host", "setattr", "--chap-user", "hu2", "h1"}, "differ")
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("the error shows the secret: %v", err)
	}
	if h := c.arr.cat.View().Hosts["h1"]; h.CHAPUser != "hu" {
		t.Fatalf("mistyped secret changed the host: %+v", h)
	}

	term = &fakeTerminal{answers: []string{testToken}}
	c.con = term.console()
	if _, err := c.run("--api", c.url, "pod", "list"); err != nil || len(term.prompts) != 1 || !strings.Contains(term.prompts[0], "API bearer token") {
		t.Fatalf("pod list with the token typed: %v, prompts %q", err, term.prompts)
	}

	// The peer's token: asked for once, then sent (this fake array does
	// not replicate, and says so).
	term = &fakeTerminal{answers: []string{"peer-token-0123456789abcdef"}}
	c.con = term.console()
	t.Setenv("METRO_TOKEN", testToken) // --token on connect is the peer's
	_, err = c.run("--api", c.url, "array", "connect", "--peer", "https://10.0.1.5:8443")
	if statusCode(err) != 501 || len(term.prompts) != 1 || !strings.Contains(term.prompts[0], "peer array's API token") {
		t.Fatalf("array connect with the peer's token typed: %v, prompts %q", err, term.prompts)
	}
}

// TestConnectNeedsHTTPS: metro array connect refuses a peer URL that is
// not HTTPS before sending anything.
func TestConnectNeedsHTTPS(t *testing.T) {
	c := newCLI(t)
	t.Setenv("METRO_TOKEN", testToken) // --token on connect is the peer's
	tokenFile := writeSecretFile(t, "peer-token", "peer-token-0123456789abcdef\n")
	connect := func(args ...string) error {
		_, err := c.run(append([]string{"--api", c.url, "array", "connect"}, args...)...)
		return err
	}
	for _, peer := range []string{"http://10.0.1.5:8443", "http://127.0.0.1:8443", "10.0.1.5:8443"} {
		if err := connect("--peer", peer, "--token-file", tokenFile); err == nil || !strings.Contains(err.Error(), "https://") || statusCode(err) != 0 {
			t.Errorf("connect to %s: %v; want a refusal asking for https:// before any request", peer, err)
		}
	}
	if err := connect("--peer", "https://10.0.1.5:8443"); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("connect without the peer's token, not on a terminal: %v", err)
	}
	if err := connect("--peer", "https://10.0.1.5:8443", "--token-file", tokenFile); statusCode(err) != 501 {
		t.Fatalf("array connect with a token file: %v, want the fake array's 501", err)
	}
}

// TestReadNoEchoOnAPseudoTerminal types a secret on a real (pseudo)
// terminal: it is read, never echoed, and echo is back on afterwards.
func TestReadNoEchoOnAPseudoTerminal(t *testing.T) {
	ptm, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer ptm.Close()
	if !echoOn(t, tty) {
		t.Fatal("a new pseudo-terminal has echo off")
	}
	var screen bytes.Buffer
	screenDone := make(chan struct{})
	go func() {
		defer close(screenDone)
		_, _ = io.Copy(&screen, ptm) // ends when the terminal side closes
	}()
	type result struct {
		v   string
		err error
	}
	got := make(chan result, 1)
	go func() {
		v, err := readNoEcho(tty, tty, "Enter the secret: ")
		got <- result{v, err}
	}()
	// Type only once echo is off: a terminal echoes as keys arrive.
	waitEcho(t, tty, false)
	const secret = "typed-on-a-tty-0123"
	if _, err := io.WriteString(ptm, secret+"\r"); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || r.v != secret {
		t.Fatalf("readNoEcho = %q, %v; want %q", r.v, r.err, secret)
	}
	if !echoOn(t, tty) {
		t.Fatal("echo is still off after the secret was read")
	}
	tty.Close()
	<-screenDone
	if !strings.Contains(screen.String(), "Enter the secret: ") {
		t.Fatalf("the prompt is not on the terminal: %q", screen.String())
	}
	if strings.Contains(screen.String(), secret) {
		t.Fatalf("the secret was echoed: %q", screen.String())
	}
}

// TestPromptInterrupted: an interrupt at the prompt ends it at once, with
// echo back on.
func TestPromptInterrupted(t *testing.T) {
	ptm, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pseudo-terminal: %v", err)
	}
	defer ptm.Close()
	defer tty.Close()
	go func() { _, _ = io.Copy(io.Discard, ptm) }()
	got := make(chan error, 1)
	go func() {
		_, err := readNoEcho(tty, tty, "Enter the secret: ")
		got <- err
	}()
	// readNoEcho catches interrupts before it turns echo off.
	waitEcho(t, tty, false)
	if err := unix.Kill(os.Getpid(), unix.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("readNoEcho after an interrupt: %v", err)
	}
	if !echoOn(t, tty) {
		t.Fatal("echo is still off after an interrupted prompt")
	}
}

// echoOn reports whether the terminal tty echoes what is typed.
func echoOn(t *testing.T, tty *os.File) bool {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return tio.Lflag&unix.ECHO != 0
}

// waitEcho waits until the terminal's echo is on (or off).
func waitEcho(t *testing.T, tty *os.File, on bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); echoOn(t, tty) != on; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("echo did not turn %v within 10s", on)
		}
	}
}

func TestReadFileLimit(t *testing.T) {
	con := &console{stdin: strings.NewReader(strings.Repeat("x", maxSecretFile+1))}
	if _, err := con.readFile("--x-file", "-"); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("an oversized secret: %v", err)
	}
}
