//! Guest page-table walks for every paging mode, and shadow paging for CPUs without EPT/NPT.
#![cfg_attr(not(test), no_std)]
