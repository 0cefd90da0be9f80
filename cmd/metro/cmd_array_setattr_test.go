package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metro-storage/metro/internal/api"
)

// SetMediator records the setting (api.MediatorAdmin).
func (f *fakeArray) SetMediator(_ context.Context, s api.MediatorSetting) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.mediator = &s
	return nil
}

func (f *fakeArray) lastMediator() *api.MediatorSetting {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.mediator
}

// TestArraySetattrMediator: setattr sends the URL, the key from its file
// and the certificate; it never prints the key; what is missing or wrong
// is said before anything is sent; --mediator "" removes the mediator.
func TestArraySetattrMediator(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	keyFile, caFile := filepath.Join(dir, "key"), filepath.Join(dir, "ca.pem")
	const key = "0123456789abcdef0123456789abcdef"
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"array", "setattr"}, "--mediator is required"},
		{[]string{"array", "setattr", "--mediator", "https://m:9095"}, "auth key is required"},
		{[]string{"array", "setattr", "--mediator", "", "--mediator-authkey-file", keyFile}, "give no auth key"},
		{[]string{"array", "setattr", "--mediator", "https://m:9095", "--mediator-authkey-file", keyFile, "--mediator-ca", filepath.Join(dir, "none")}, "--mediator-ca"},
		{[]string{"array", "setattr", "--mediator", "https://m:9095", "--mediator-authkey-file", filepath.Join(dir, "none")}, "--mediator-authkey-file"},
		{[]string{"array", "setattr", "extra"}, "takes no arguments"},
	} {
		c.fail(tc.args, tc.want)
	}
	if c.arr.lastMediator() != nil {
		t.Fatal("a refused setattr reached the array")
	}
	out := c.ok("array", "setattr", "--mediator", "https://m:9095", "--mediator-authkey-file", keyFile, "--mediator-ca", caFile)
	if strings.Contains(out, key) {
		t.Fatal("setattr printed the key")
	}
	mustContain(t, out, "Mediator", "array-a")
	if got := c.arr.lastMediator(); got == nil || got.URL != "https://m:9095" || got.AuthKey != key || !strings.Contains(got.CA, "BEGIN CERTIFICATE") {
		t.Fatalf("sent %+v", got)
	}
	c.ok("array", "setattr", "--mediator", "")
	if got := c.arr.lastMediator(); got == nil || *got != (api.MediatorSetting{}) {
		t.Fatalf("remove sent %+v", got)
	}
}
