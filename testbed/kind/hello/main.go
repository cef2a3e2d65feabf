// hello: the small HTTP server the kind tier's live tests deploy. It answers every request
// with one line naming the pod (HOSTNAME) and the node (NODE_NAME, from the downward API);
// /headers answers with the request's headers, one per line, so a test sees what a proxy in
// front of it added (x-forwarded-client-cert from an Istio sidecar, for one).
//
// `hello get URL` is its client, for requests from inside a pod (the image holds nothing
// else): one GET with a 5 s timeout, no proxy from the environment; it prints the status
// line, the response headers and the body, and exits 0 on any HTTP answer, 1 when there is
// none (refused, reset, timed out).
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "get" {
		os.Exit(get(os.Args[2]))
	}
	addr := ":8080"
	if a := os.Getenv("ADDR"); a != "" {
		addr = a
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pod %s on node %s\n", os.Getenv("HOSTNAME"), os.Getenv("NODE_NAME"))
	})
	http.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(w, "%s: %s\n", strings.ToLower(k), strings.Join(r.Header[k], ", "))
		}
	})
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}

func get(url string) int {
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Printf("no answer: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	fmt.Printf("%s %s\n", resp.Proto, resp.Status)
	names := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("%s: %s\n", strings.ToLower(k), strings.Join(resp.Header[k], ", "))
	}
	fmt.Printf("\n%s", body)
	if err != nil {
		fmt.Printf("\nbody cut short: %v\n", err)
		return 1
	}
	return 0
}
