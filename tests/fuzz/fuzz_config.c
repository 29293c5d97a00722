// fuzz_config.c: the network configuration's JSON form and its validator (common/model/config.c).
// A config that validates is turned back into JSON and read again: the round trip must agree.
#include <stdlib.h>
#include <string.h>

#include "common/model/config.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char *json = malloc(n + 1);
    if (!json) return 0;
    memcpy(json, data, n);
    json[n] = '\0';
    struct msd_config c;
    if (msd_config_from_json(&c, json, "fuzz") == 0 && msd_config_validate(&c) == 0) {
        char *again = msd_config_to_json(&c);
        struct msd_config c2;
        if (!again || msd_config_from_json(&c2, again, "round trip") != 0) abort();
        free(again);
    }
    free(json);
    return 0;
}
