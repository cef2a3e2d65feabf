//! `bookinfo-down PLAN`: take down what `bookinfo-up` brought up.

fn main() {
    std::process::exit(bookinfo_up::cli::down_main());
}
