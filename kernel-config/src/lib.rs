//! Kernel config fragment and checker. (being written)
