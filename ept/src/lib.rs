//! Second-level address translation tables: Intel EPT and AMD NPT formats.
#![cfg_attr(not(test), no_std)]
