//! Report JSON (a baseline for the gate, the input of a merge): any bytes give a report or a
//! typed error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = perturb_fuzz::as_file("report", data);
    let _ = perturb::export::read_report(&path);
});
