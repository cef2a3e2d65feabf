// The API server's floor for `just bench scale`: the same creates the tools send, by the
// smallest client that can send them, at the API server's max-in-flight. Standard library
// only: HTTP/2 over TLS (one connection, as many streams as the server allows), client
// certificate or bearer token, every object POSTed to its collection once, the namespaces
// first. Nothing is read back, retried or rate-limited.
//
//	floor -server https://127.0.0.1:PORT -ca CA [-cert CRT -key KEY | -token T] \
//	      -concurrency N -objects FILE
//
// FILE holds one JSON document a line: {"phase": 0|1, "path": "/api/v1/namespaces", "body":
// {...}}. Phase 0 (the namespaces) is sent, and answered, before phase 1. Prints one JSON
// line: requests, errors (by status), seconds from the first request to the last answer, and
// the HTTP version the server answered with. Exits 1 when any create failed.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

type line struct {
	Phase int             `json:"phase"`
	Path  string          `json:"path"`
	Body  json.RawMessage `json:"body"`
}

func main() {
	server := flag.String("server", "", "API server URL (https://127.0.0.1:PORT)")
	caFile := flag.String("ca", "", "CA certificate file")
	certFile := flag.String("cert", "", "client certificate file")
	keyFile := flag.String("key", "", "client key file")
	token := flag.String("token", "", "bearer token")
	concurrency := flag.Int("concurrency", 200, "requests in flight")
	objects := flag.String("objects", "", "objects to create, one JSON line each")
	flag.Parse()

	tlsConfig := &tls.Config{}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		check(err)
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			check(fmt.Errorf("no certificate in %s", *caFile))
		}
		tlsConfig.RootCAs = pool
	}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		check(err)
		tlsConfig.Certificates = []tls.Certificate{pair}
	}
	transport := &http.Transport{
		TLSClientConfig:     tlsConfig,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: *concurrency,
	}
	client := &http.Client{Transport: transport, Timeout: 60 * time.Second}

	f, err := os.Open(*objects)
	check(err)
	var phases [2][]line
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	for scanner.Scan() {
		var l line
		check(json.Unmarshal(scanner.Bytes(), &l))
		phases[l.Phase] = append(phases[l.Phase], l)
	}
	check(scanner.Err())

	var requests atomic.Int64
	var mu sync.Mutex
	errors := map[string]int{}
	proto := ""
	send := func(l line) {
		req, err := http.NewRequest("POST", *server+l.Path, bytes.NewReader(l.Body))
		check(err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "bookinfo-up-bench-floor")
		if *token != "" {
			req.Header.Set("Authorization", "Bearer "+*token)
		}
		resp, err := client.Do(req)
		requests.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errors[err.Error()]++
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		proto = resp.Proto
		if resp.StatusCode != http.StatusCreated {
			errors[resp.Status]++
		}
	}

	start := time.Now()
	for _, batch := range phases {
		work := make(chan line)
		var wg sync.WaitGroup
		for i := 0; i < *concurrency; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for l := range work {
					send(l)
				}
			}()
		}
		for _, l := range batch {
			work <- l
		}
		close(work)
		wg.Wait()
	}
	elapsed := time.Since(start).Seconds()
	out, _ := json.Marshal(map[string]any{
		"requests": requests.Load(), "errors": errors, "seconds": elapsed, "proto": proto,
		"concurrency": *concurrency,
	})
	fmt.Println(string(out))
	if len(errors) > 0 {
		os.Exit(1)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(2)
	}
}
