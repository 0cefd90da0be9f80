//go:build cuharness

// This file is a manual conformance harness, built only with -tags
// cuharness: it serves one in-memory logical unit over the iscsi package so
// that libiscsi's iscsi-test-cu can be pointed at the SCSI layer alone.
//
//	SCSI_CU_ADDR=127.0.0.1:13270 SCSI_CU_SECONDS=600 \
//	  go test -tags cuharness -run TestCUHarness -timeout 0 ./internal/scsi/
//	iscsi-test-cu -d -t ALL iscsi://127.0.0.1:13270/iqn.2024-01.test:harness/0

package scsi_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/metro-storage/metro/internal/iscsi"
	"github.com/metro-storage/metro/internal/scsi"
)

type harnessBackend struct{}

func (harnessBackend) Targets(string) []iscsi.TargetInfo {
	return []iscsi.TargetInfo{{Name: "iqn.2024-01.test:harness"}}
}

func (harnessBackend) Authorize(target, initiator string) (iscsi.CHAP, error) {
	return iscsi.CHAP{}, nil
}

func TestCUHarness(t *testing.T) {
	addr := os.Getenv("SCSI_CU_ADDR")
	if addr == "" {
		t.Skip("SCSI_CU_ADDR not set")
	}
	secs, _ := strconv.Atoi(os.Getenv("SCSI_CU_SECONDS"))
	if secs == 0 {
		secs = 300
	}
	level := slog.LevelWarn
	if os.Getenv("SCSI_CU_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	lu := scsi.NewLogicalUnit(scsi.LUConfig{UUID: [16]byte{1, 2, 3}, Size: 1 << 30, Backend: scsi.NewMemBackend(), Logger: log})
	res := scsi.NewStaticResolver(map[uint64]*scsi.LogicalUnit{0: lu})
	tgt := scsi.NewTarget(scsi.TargetConfig{Resolver: res, Logger: log})
	srv := iscsi.NewServer(iscsi.Config{Backend: harnessBackend{}, Executor: tgt, TPGT: 1, RelativePortID: 1, Logger: log})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	<-ctx.Done()
	srv.Close()
	<-done
}
