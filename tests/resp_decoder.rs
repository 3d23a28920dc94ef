//! The `resp_server` example's decoder and encoder, with their unit tests (every split point of
//! a request, work linear in a request's size however it is cut, inline quoting and integers as
//! redis-server reads them), run here: an example built as a test harness (`test = true`) is no
//! longer built as the program the other tests run.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/resp_server/resp.rs"]
mod resp;
