// Per-thread error text. Go's goroutines are not threads, but a call from C
// into Go runs on the calling thread, so C thread-local storage written
// during the call belongs to the caller's thread.
#include <string.h>

static __thread char gnlp_error_text[1024];

void gnlpSetError(const char *msg, size_t len) {
    if (len >= sizeof gnlp_error_text) {
        len = sizeof gnlp_error_text - 1;
    }
    memcpy(gnlp_error_text, msg, len);
    gnlp_error_text[len] = '\0';
}

const char *gnlp_last_error(void) { return gnlp_error_text; }
