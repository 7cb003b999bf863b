// Command etcd_load drives etcd with puts over gRPC for bench/consensus.py.
//
// N goroutines (--clients) each keep one put of a --value-size value in
// flight, spread round-robin over --conns gRPC connections, for --seconds
// after a --warmup. It prints one machine-readable line:
//
//	ETCD_LOAD puts_per_s=... p50_ms=... p99_ms=... ops=... errors=... clients=... conns=...
//
// It is built by bench/consensus.py with GO111MODULE=off against Debian's
// golang-etcd-server-dev (etcd 3.4.23's clientv3 under /usr/share/gocode), so
// it imports nothing outside the Go standard library and that package tree.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated etcd client endpoints")
	clients := flag.Int("clients", 16, "goroutines, each with one put in flight")
	conns := flag.Int("conns", 1, "gRPC connections the goroutines share (round-robin)")
	seconds := flag.Float64("seconds", 3, "measuring time")
	warmup := flag.Float64("warmup", 1, "time spent putting before measuring")
	valueSize := flag.Int("value-size", 200, "bytes per value")
	flag.Parse()
	if *clients < 1 || *conns < 1 || *conns > *clients {
		fmt.Fprintln(os.Stderr, "etcd_load: need clients >= 1 and 1 <= conns <= clients")
		os.Exit(2)
	}

	connections := make([]*clientv3.Client, *conns)
	for i := range connections {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   strings.Split(*endpoints, ","),
			DialTimeout: 10 * time.Second,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "etcd_load: cannot connect to %s: %v\n", *endpoints, err)
			os.Exit(1)
		}
		defer c.Close()
		connections[i] = c
	}
	value := strings.Repeat("v", *valueSize)

	run := func(duration time.Duration) ([]time.Duration, int, time.Duration) {
		var mu sync.Mutex
		var all []time.Duration
		errors := 0
		var wg sync.WaitGroup
		start := time.Now()
		deadline := start.Add(duration)
		for g := 0; g < *clients; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				kv := connections[g%*conns]
				var mine []time.Duration
				failed := 0
				for n := 0; time.Now().Before(deadline); n++ {
					began := time.Now()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := kv.Put(ctx, fmt.Sprintf("bench/%d/%d", g, n), value)
					cancel()
					if err != nil {
						failed++
						continue
					}
					mine = append(mine, time.Since(began))
				}
				mu.Lock()
				all = append(all, mine...)
				errors += failed
				mu.Unlock()
			}(g)
		}
		wg.Wait()
		return all, errors, time.Since(start)
	}

	if *warmup > 0 {
		run(time.Duration(*warmup * float64(time.Second)))
	}
	latencies, errors, elapsed := run(time.Duration(*seconds * float64(time.Second)))
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	percentile := func(fraction float64) float64 {
		if len(latencies) == 0 {
			return -1
		}
		index := int(fraction * float64(len(latencies)))
		if index >= len(latencies) {
			index = len(latencies) - 1
		}
		return float64(latencies[index]) / float64(time.Millisecond)
	}
	fmt.Printf("ETCD_LOAD puts_per_s=%.1f p50_ms=%.3f p99_ms=%.3f ops=%d errors=%d clients=%d conns=%d\n",
		float64(len(latencies))/elapsed.Seconds(), percentile(0.5), percentile(0.99), len(latencies), errors,
		*clients, *conns)
}
