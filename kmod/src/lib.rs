//! Kernel module index. (being written)
