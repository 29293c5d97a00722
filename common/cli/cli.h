// cli.h: command-line helpers shared by msdiff's subcommands.
//
// Holds: a table-driven flag parser ("--flag VALUE", "--flag=VALUE", switches, -h/--help, required
// flags) whose every complaint is one line naming the flag and the value it expects; strict
// converters from text to integers, doubles and comma-separated lists (the whole word must be the
// number, in range); and the formatting of counts with thousands separators and of reals in their
// shortest exact form.
// Does not hold: what any subcommand does, or the help texts (common/cli/cmd_<name>.c).
//
// Exit statuses of the program: 0 success, CLI_FAIL when a library call fails (a file that cannot be
// read, a corrupt checkpoint), CLI_USAGE for a bad command line.
#ifndef MSD_CLI_H
#define MSD_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLI_FAIL 1
#define CLI_USAGE 2

#define CLI_LIST_MAX 16 // most entries of a comma-separated list flag
#define CLI_NUM_BUF 32  // enough for any uint64 with separators and any double in %.17g

// A comma-separated list of numbers: "8,8,4" or "0.5,2.5".
struct cli_ints { int n; int v[CLI_LIST_MAX]; };
struct cli_doubles { int n; double v[CLI_LIST_MAX]; };

enum cli_type {
    CLI_STR,     // dst: const char **  (points into argv)
    CLI_INT,     // dst: int *, within [lo, hi]
    CLI_U64,     // dst: uint64_t *, decimal digits only
    CLI_DOUBLE,  // dst: double *, a finite number strtod reads completely (the command checks the range);
                 // +inf too when the option's inf_ok is set; NaN never
    CLI_SWITCH,  // dst: bool *, takes no value
    CLI_INTS,    // dst: struct cli_ints *, each entry within [lo, hi], at most `max` entries
    CLI_DOUBLES, // dst: struct cli_doubles *, at most `max` finite entries
};

struct cli_opt {
    const char *flag;   // "--sigma"
    enum cli_type type;
    void *dst;          // written only when the flag is given; preset it to the default
    const char *expect; // the value in words for messages, e.g. "a noise level > 0"
    bool required;
    long long lo, hi;   // CLI_INT, CLI_INTS: accepted range of each value
    int max;            // CLI_INTS, CLI_DOUBLES: most entries (1..CLI_LIST_MAX)
    bool inf_ok;        // CLI_DOUBLE: "inf" is a value (a bound that may be absent, such as --s-max)
    bool seen;          // set by cli_parse when the flag was given
};

// Print "msdiff CMD: <message>" as one line to stderr. Returns CLI_USAGE.
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Parse args[0..argc) (the words after the command name) against opts[0..n). Returns 0 when every
// word was a known flag with a good value and every required flag was given; 1 when -h or --help
// was given (nothing else is checked then); CLI_USAGE after printing a one-line error: an unknown
// flag (the message lists the known ones), a word that is not a flag, a flag given twice, a missing
// or bad value (a number that is NaN, infinite or beyond a double, an empty list entry as in "1,",
// ",1" or "1,,2"), a missing required flag.
int cli_parse(const char *cmd, int argc, char **args, struct cli_opt *opts, int n);
// Whether flag was on the command line that cli_parse read into opts (false for a flag not in opts).
bool cli_given(const struct cli_opt *opts, int n, const char *flag);

// Strict conversions: the whole of s must be the number (no spaces, no trailing text). 0, or -1 when
// s is not such a number or is out of range (no message; the parser writes it). cli_to_double
// accepts what strtod reads, "nan" and "inf" included; the parser decides about those.
int cli_to_ll(const char *s, long long lo, long long hi, long long *out);
int cli_to_u64(const char *s, uint64_t *out);
int cli_to_double(const char *s, double *out);

// v with thousands separators ("55,732,739") into buf[CLI_NUM_BUF]. Returns buf.
char *cli_fmt_count(uint64_t v, char *buf);
// The shortest "%.Ng" text that reads back as exactly v: as a float when as_float (a config field,
// 2.5103f prints "2.5103"), else as a double. Into buf[CLI_NUM_BUF]. Returns buf.
char *cli_fmt_real(double v, bool as_float, char *buf);

#endif
