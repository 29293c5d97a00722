// cli.c: the flag parser, the strict number converters and the number formatting of cli.h.
//
// Every complaint is one line, "msdiff CMD: --flag: expected <what>, got '<text>'", so a user sees
// at once which word was wrong and what would have been right. Nothing here exits or aborts: the
// parser returns a status and the command decides.
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_error(const char *cmd, const char *fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "msdiff %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_USAGE;
}

// ---------------------------------------------------------------------------------------------------
// Strict conversions

int cli_to_ll(const char *s, long long lo, long long hi, long long *out) {
    // strtoll skips leading spaces and accepts a sign; we want the digits and an optional '-' only
    if (!s || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_to_u64(const char *s, uint64_t *out) {
    // strtoull would accept "-1" and wrap it round to 2^64 - 1
    if (!s || !(s[0] >= '0' && s[0] <= '9')) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0') return -1;
    *out = (uint64_t)v;
    return 0;
}

int cli_to_double(const char *s, double *out) {
    if (!s || s[0] == '\0' || s[0] == ' ' || s[0] == '\t') return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    // overflow reads as +-HUGE_VAL (infinite): keep it, the parser refuses it as it does "inf"; an
    // underflow to a tiny or zero value is kept, the command's range check names it
    if (end == s || *end != '\0') return -1;
    *out = v;
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Formatting

char *cli_fmt_count(uint64_t v, char *buf) {
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)v), k = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && (n - i) % 3 == 0) buf[k++] = ',';
        buf[k++] = digits[i];
    }
    buf[k] = '\0';
    return buf;
}

char *cli_fmt_real(double v, bool as_float, char *buf) {
    const int most = as_float ? 9 : 17; // digits that always round-trip
    if (!isfinite(v)) {
        snprintf(buf, CLI_NUM_BUF, "%g", v);
        return buf;
    }
    for (int digits = 1; digits < most; digits++) {
        snprintf(buf, CLI_NUM_BUF, "%.*g", digits, v);
        double back = strtod(buf, NULL);
        if (as_float ? (float)back == (float)v : back == v) return buf;
    }
    snprintf(buf, CLI_NUM_BUF, "%.*g", most, v);
    return buf;
}

// ---------------------------------------------------------------------------------------------------
// The parser

static const char *type_words(const struct cli_opt *o) {
    switch (o->type) {
    case CLI_STR: return "a value";
    case CLI_INT: return "an integer";
    case CLI_U64: return "a non-negative integer";
    case CLI_DOUBLE: return "a number";
    case CLI_SWITCH: return "no value";
    case CLI_INTS: return "comma-separated integers";
    case CLI_DOUBLES: return "comma-separated numbers";
    }
    return "a value";
}

static const char *expected(const struct cli_opt *o) { return o->expect ? o->expect : type_words(o); }

static int bad_value(const char *cmd, const struct cli_opt *o, const char *v) {
    return cli_error(cmd, "%s: expected %s, got '%s'", o->flag, expected(o), v);
}

// NaN and the infinities (an overflow such as 1e999 reads as one) are no flag's value: every range
// check a command makes is false for NaN, and a sigma or a rate of inf turns into NaN downstream. The
// exception is a bound that may be absent (inf_ok), where +inf is the default written out.
static bool finite_or_allowed(const struct cli_opt *o, double x) {
    return isfinite(x) || (o->inf_ok && o->type == CLI_DOUBLE && x == INFINITY);
}

static int not_finite(const char *cmd, const struct cli_opt *o, const char *word, int entry) {
    const char *also = o->inf_ok && o->type == CLI_DOUBLE ? " or inf" : "";
    if (entry) return cli_error(cmd, "%s: entry %d is '%s'; expected %s, each a finite number", o->flag, entry,
                                word, expected(o));
    return cli_error(cmd, "%s: expected %s (a finite number%s), got '%s'", o->flag, expected(o), also, word);
}

// A comma-separated list into ints or doubles. Entries are copied one at a time into a small buffer,
// so the converters see exactly one number each.
static int parse_list(const char *cmd, const struct cli_opt *o, const char *v) {
    struct cli_ints *li = o->dst;
    struct cli_doubles *ld = o->dst;
    int n = 0;
    const char *p = v;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char word[64];
        if (len == 0 || len >= sizeof word)
            return cli_error(cmd, "%s: entry %d of '%s' is %s; expected %s", o->flag, n + 1, v,
                             len ? "too long" : "empty", expected(o));
        memcpy(word, p, len);
        word[len] = '\0';
        if (n >= o->max)
            return cli_error(cmd, "%s: '%s' has more than %d entries; expected %s", o->flag, v, o->max,
                             expected(o));
        if (o->type == CLI_INTS) {
            long long x;
            if (cli_to_ll(word, o->lo, o->hi, &x))
                return cli_error(cmd, "%s: entry %d is '%s'; expected %s (each %lld..%lld)", o->flag,
                                 n + 1, word, expected(o), o->lo, o->hi);
            li->v[n] = (int)x;
        } else {
            double x;
            if (cli_to_double(word, &x))
                return cli_error(cmd, "%s: entry %d is '%s', not a number; expected %s", o->flag, n + 1,
                                 word, expected(o));
            if (!finite_or_allowed(o, x)) return not_finite(cmd, o, word, n + 1);
            ld->v[n] = x;
        }
        n++;
        if (!comma) break;
        p = comma + 1;
    }
    if (o->type == CLI_INTS) li->n = n;
    else ld->n = n;
    return 0;
}

static int set_value(const char *cmd, struct cli_opt *o, const char *v) {
    long long x;
    double d;
    switch (o->type) {
    case CLI_STR:
        if (v[0] == '\0') return bad_value(cmd, o, v);
        *(const char **)o->dst = v;
        return 0;
    case CLI_INT:
        if (cli_to_ll(v, o->lo, o->hi, &x))
            return cli_error(cmd, "%s: expected %s (an integer %lld..%lld), got '%s'", o->flag,
                             expected(o), o->lo, o->hi, v);
        *(int *)o->dst = (int)x;
        return 0;
    case CLI_U64:
        return cli_to_u64(v, o->dst) ? bad_value(cmd, o, v) : 0;
    case CLI_DOUBLE:
        if (cli_to_double(v, &d)) return bad_value(cmd, o, v);
        if (!finite_or_allowed(o, d)) return not_finite(cmd, o, v, 0);
        *(double *)o->dst = d;
        return 0;
    case CLI_INTS:
    case CLI_DOUBLES:
        return parse_list(cmd, o, v);
    case CLI_SWITCH:
        break;
    }
    return cli_error(cmd, "%s takes no value, got '%s'", o->flag, v);
}

static int unknown_flag(const char *cmd, const char *word, const struct cli_opt *opts, int n) {
    char known[512] = "";
    size_t len = 0;
    for (int i = 0; i < n && len < sizeof known; i++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "", opts[i].flag);
    return cli_error(cmd, "unknown flag '%s' (the flags of 'msdiff %s' are: %s; see msdiff help %s)", word,
                     cmd, n ? known : "none", cmd);
}

bool cli_given(const struct cli_opt *opts, int n, const char *flag) {
    for (int i = 0; i < n; i++)
        if (!strcmp(opts[i].flag, flag)) return opts[i].seen;
    return false;
}

int cli_parse(const char *cmd, int argc, char **args, struct cli_opt *opts, int n) {
    for (int i = 0; i < n; i++) opts[i].seen = false;
    for (int i = 0; i < argc; i++)
        if (!strcmp(args[i], "-h") || !strcmp(args[i], "--help")) return 1;
    for (int i = 0; i < argc; i++) {
        const char *word = args[i];
        if (strncmp(word, "--", 2) != 0)
            return cli_error(cmd, "unexpected argument '%s' (every option is a flag like --name VALUE; "
                             "see msdiff help %s)", word, cmd);
        const char *eq = strchr(word, '=');
        size_t name_len = eq ? (size_t)(eq - word) : strlen(word);
        struct cli_opt *o = NULL;
        for (int k = 0; k < n && !o; k++)
            if (strlen(opts[k].flag) == name_len && !strncmp(opts[k].flag, word, name_len)) o = &opts[k];
        if (!o) return unknown_flag(cmd, word, opts, n);
        if (o->seen) return cli_error(cmd, "%s is given twice; give it once", o->flag);
        o->seen = true;
        if (o->type == CLI_SWITCH) {
            if (eq) return cli_error(cmd, "%s takes no value, got '%s'", o->flag, eq + 1);
            *(bool *)o->dst = true;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            // a following word that is itself a flag means the value was forgotten; a negative
            // number ("-1") is still taken as a value, so that its range check can name it
            if (i + 1 >= argc || !strncmp(args[i + 1], "--", 2))
                return cli_error(cmd, "%s needs a value: expected %s", o->flag, expected(o));
            v = args[++i];
        }
        if (set_value(cmd, o, v)) return CLI_USAGE;
    }
    for (int i = 0; i < n; i++)
        if (opts[i].required && !opts[i].seen)
            return cli_error(cmd, "missing %s: expected %s (see msdiff help %s)", opts[i].flag,
                             expected(&opts[i]), cmd);
    return 0;
}
