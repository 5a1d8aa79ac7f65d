// A Go service whose worker goroutines measure their own phases: each is locked to its
// thread and reads the thread's CPU clock around every phase, so the time each function
// holds is known exactly.
//
// Usage: phases SECONDS WORKERS TRUTH.json
//
// `predict` is a leaf with no frame of its own (Go gives none to a function that needs
// no stack), so a walk by frame pointers skips its caller; `preprocess` has one.
package main

import (
	"encoding/json"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

var table [1024]int

func threadCPU() int64 {
	var ts syscall.Timespec
	// CLOCK_THREAD_CPUTIME_ID
	syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, 3, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

func processCPU() int64 {
	var ts syscall.Timespec
	// CLOCK_PROCESS_CPUTIME_ID
	syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, 2, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

// weigh is inlined into predict: the function table keeps it a frame of its own.
func weigh(i int) int {
	return table[i&1023] * i
}

//go:noinline
func predict(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += weigh(i)
	}
	return s
}

//go:noinline
func scale(v int) int {
	return v*3 + 1
}

//go:noinline
func preprocess(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s ^= scale(table[(i*7)&1023])
	}
	return s
}

type phases struct {
	preprocess, predict, worker int64
}

//go:noinline
func worker(deadline time.Time, out *phases, sink *int) {
	runtime.LockOSThread()
	start := threadCPU()
	for time.Now().Before(deadline) {
		t0 := threadCPU()
		*sink += preprocess(200000)
		t1 := threadCPU()
		*sink += predict(600000)
		t2 := threadCPU()
		out.preprocess += t1 - t0
		out.predict += t2 - t1
	}
	out.worker = threadCPU() - start
}

func main() {
	seconds, _ := strconv.ParseFloat(os.Args[1], 64)
	workers, _ := strconv.Atoi(os.Args[2])
	for i := range table {
		table[i] = i * 31
	}
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	results := make([]phases, workers)
	sinks := make([]int, workers)
	var group sync.WaitGroup
	for i := 0; i < workers; i++ {
		group.Add(1)
		go func(i int) {
			defer group.Done()
			worker(deadline, &results[i], &sinks[i])
		}(i)
	}
	group.Wait()
	var total phases
	for _, r := range results {
		total.preprocess += r.preprocess
		total.predict += r.predict
		total.worker += r.worker
	}
	truth := map[string]int64{
		"process_ns":      processCPU(),
		"main.preprocess": total.preprocess,
		"main.predict":    total.predict,
		"main.worker":     total.worker,
	}
	bytes, _ := json.Marshal(truth)
	if err := os.WriteFile(os.Args[3], bytes, 0o644); err != nil {
		panic(err)
	}
}
