// hello: the small HTTP server the kind tier's live test deploys. It answers every request
// with one line naming the pod (HOSTNAME) and the node (NODE_NAME, from the downward API).
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	addr := ":8080"
	if a := os.Getenv("ADDR"); a != "" {
		addr = a
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from pod %s on node %s\n", os.Getenv("HOSTNAME"), os.Getenv("NODE_NAME"))
	})
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
