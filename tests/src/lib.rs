//! QEMU harness. (being written)
