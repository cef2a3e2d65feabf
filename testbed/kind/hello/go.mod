module bookinfo-up/testbed/kind/hello

go 1.24
