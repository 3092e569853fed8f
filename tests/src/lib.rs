//! The QEMU test harness: boots Berth's kernel and initramfs under KVM when KVM really
//! works here and TCG otherwise, one VM at a time, with the serial console in a file, QMP
//! on a unix socket, and (for the test image) berth-testd on a virtio-serial port.

pub mod accel;
pub mod bench_report;
pub mod console;
pub mod demo_bench;
pub mod frames;
pub mod http;
pub mod lock;
pub mod logforward_bench;
pub mod qmp;
pub mod testd;
pub mod update_bench;
pub mod vm;
pub mod volumes;
