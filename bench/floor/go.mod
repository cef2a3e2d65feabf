module bookinfo-up.local/bench/floor

go 1.22
