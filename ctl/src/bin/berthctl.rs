//! The host's berthctl (in the image, berthctl is a link to init; see the library).

fn main() -> std::process::ExitCode {
    berth_ctl::main(std::env::args_os())
}
