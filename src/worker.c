#include "webhook_outbox.h"
#include "postmaster/bgworker.h"
void webhook_register_worker(void) {}
void webhook_worker_main(Datum main_arg) { (void) main_arg; }
