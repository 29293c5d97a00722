// test_cli.c: the msdiff program from the outside: it runs the built ./msdiff (tests run from the
// repository root; make builds ./msdiff first) and checks exit statuses, what it prints and the
// files it writes. info against the paper's counts, init's determinism and its round trip through
// info --model, export --fp16 against the F16 rounding, denoise against msd_denoise_forward called in this process (bit for bit), and every
// bad command line a user is likely to type; what train says when a batch does not fit, new or
// resumed. Also the strict number parsing of common/cli/cli.h.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/io/checkpoint.h"
#include "common/io/png.h"
#include "common/cli/cli.h"
#include "common/cli/run.h"
#include "common/model/config.h"
#include "common/core/error.h"
#include "common/model/precond.h"
#include "common/io/safetensors.h"
#include "testutil.h"

// ---------------------------------------------------------------------------------------------------
// The program runs through MSDIFF (testutil.h), its files go to the temporary directory (test_path).

// A bad command line: run msdiff with the arguments, expect exit status `status` and one line on
// stderr holding `needle`.
#define FAILS(status, needle, ...)                                                                   \
    do {                                                                                             \
        struct test_run r_ = MSDIFF(__VA_ARGS__);                                                    \
        TEST_EXPECT_FAIL(&r_, status, needle);                                                       \
        test_run_free(&r_);                                                                          \
    } while (0)

// The line of text whose first non-blank characters are `prefix`, or "" (copied into a static buffer).
static const char *line_of(const char *text, const char *prefix) {
    static char buf[512];
    buf[0] = '\0';
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const char *q = p + strspn(p, " \t");
        if (strncmp(q, prefix, strlen(prefix))) continue;
        size_t n = strcspn(p, "\n");
        snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), p);
        break;
    }
    return buf;
}

// ---------------------------------------------------------------------------------------------------
// info

static void check_info(const char *preset, const char *params, const char *const *macs, int n_stages) {
    struct test_run r = MSDIFF("info", "--preset", preset);
    test_expect_ok(&r);
    ck_assert_msg(strstr(line_of(r.out, "parameters"), params), "info --preset %s: want '%s' parameters, got: %s",
                  preset, params, r.out);
    for (int s = 0; s < n_stages; s++) {
        char label[16], want[64];
        snprintf(label, sizeof label, "stage %d ", s);
        snprintf(want, sizeof want, "%s MAC", macs[s]);
        ck_assert_msg(strstr(line_of(r.out, label), want), "info --preset %s: stage %d wants '%s', got: %s",
                      preset, s, want, r.out);
    }
    char label[16];
    snprintf(label, sizeof label, "stage %d ", n_stages);
    ck_assert_msg(line_of(r.out, label)[0] == '\0', "info --preset %s lists more than %d stages: %s", preset,
                  n_stages, r.out);
    test_run_free(&r);
}

START_TEST(info_paper_counts) {
    check_info("cifar10", "55,732,739", (const char *[]){"21,190,213,632"}, 1);
    check_info("cifar10-ms", "128,792,233",
               (const char *[]){"35,750,150,144", "21,190,213,632", "7,725,498,368"}, 3);
    check_info("mini", "1,752,993", (const char *[]){"340,216,960"}, 1);
    check_info("mini-ms", "4,325,179", (const char *[]){"604,495,232", "340,216,960", "120,481,792"}, 3);
    struct test_run r = MSDIFF("info", "--preset", "cifar10");
    ck_assert_msg(strstr(r.out, "21,190,213,632 MAC (21.19 GMAC)"), "GMAC text missing: %s", r.out);
    ck_assert_msg(strstr(line_of(r.out, "kind"), "unified"), "cifar10 is not called unified: %s", r.out);
    test_run_free(&r);
    r = MSDIFF("info", "--preset", "cifar10-ms");
    ck_assert_msg(strstr(line_of(r.out, "kind"), "multistage"), "cifar10-ms is not called multistage: %s", r.out);
    ck_assert_msg(strstr(line_of(r.out, "boundaries"), "2.5103, 7.6577"), "boundaries missing: %s", r.out);
    ck_assert_msg(strstr(line_of(r.out, "decoder widths"), "192, 128, 16"), "decoder widths missing: %s", r.out);
    test_run_free(&r);
}
END_TEST

START_TEST(info_json) {
    struct test_run r = MSDIFF("info", "--preset", "mini-ms", "--json");
    test_expect_ok(&r);
    cJSON *j = cJSON_Parse(r.out);
    ck_assert_msg(j != NULL, "info --json does not print JSON: %s", r.out);
    const cJSON *p = cJSON_GetObjectItem(j, "parameters"), *macs = cJSON_GetObjectItem(j, "macs_per_image");
    ck_assert_msg(cJSON_GetNumberValue(cJSON_GetObjectItem(p, "total")) == 4325179.0, "total wrong: %s", r.out);
    const double want[3] = {604495232.0, 340216960.0, 120481792.0};
    ck_assert_msg(cJSON_GetArraySize(macs) == 3, "want 3 MAC entries: %s", r.out);
    for (int s = 0; s < 3; s++)
        ck_assert_msg(cJSON_GetNumberValue(cJSON_GetArrayItem(macs, s)) == want[s], "stage %d MAC wrong: %s", s,
                      r.out);
    ck_assert_msg(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(j, "kind")), "multistage"), "kind: %s", r.out);
    cJSON_Delete(j);
    test_run_free(&r);
}
END_TEST

START_TEST(info_bad_lines) {
    struct test_run r = MSDIFF("info", "--preset", "nosuch");
    ck_assert_msg(r.status == 1 || r.status == 2, "unknown preset exited with %d: %s", r.status, r.err);
    for (int i = 0; msd_preset_names[i]; i++)
        ck_assert_msg(strstr(r.err, msd_preset_names[i]), "unknown preset: message does not list '%s': %s",
                      msd_preset_names[i], r.err);
    test_run_free(&r);
    FAILS(2, "--preset", "info");
    FAILS(2, "exactly one", "info", "--preset", "mini", "--model", "x.safetensors");
    FAILS(2, "--preset needs a value", "info", "--preset");
    FAILS(2, "--verbose", "info", "--preset", "mini", "--verbose");
    FAILS(2, "twice", "info", "--preset", "mini", "--preset", "tiny");
    FAILS(1, "absent.safetensors", "info", "--model", test_path("absent.safetensors"));
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// init

// info --model of a fresh checkpoint prints what info --preset prints, but for its first line.
static void check_init_roundtrip(const char *preset) {
    const char *ck = test_path("roundtrip.safetensors");
    struct test_run r = MSDIFF("init", "--preset", preset, "--seed", "3", "--out", ck);
    test_expect_ok(&r);
    ck_assert_msg(strstr(r.out, ck), "init does not say what it wrote: %s", r.out);
    struct test_run a = MSDIFF("info", "--preset", preset), b = MSDIFF("info", "--model", ck);
    test_expect_ok(&a);
    test_expect_ok(&b);
    const char *ta = strchr(a.out, '\n'), *tb = strchr(b.out, '\n');
    ck_assert_msg(ta && tb && !strcmp(ta, tb), "%s: info --model differs from info --preset:\n%s\n---\n%s", preset,
                  a.out, b.out);
    ck_assert_msg(strstr(b.out, "checkpoint") && strstr(b.out, ck), "info --model does not name the file: %s",
                  b.out);
    test_run_free(&r);
    test_run_free(&a);
    test_run_free(&b);
    unlink(ck);
}

START_TEST(init_info_roundtrip) {
    check_init_roundtrip("mini-ms");
    check_init_roundtrip("mini");
    check_init_roundtrip("tiny-ms");
}
END_TEST

START_TEST(init_deterministic) {
    const char *a = test_path("det-a.safetensors"), *b = test_path("det-b.safetensors");
    const char *c = test_path("det-c.safetensors");
    struct test_run r1 = MSDIFF("init", "--preset", "tiny-ms", "--seed", "1", "--out", a);
    struct test_run r2 = MSDIFF("init", "--preset", "tiny-ms", "--seed", "1", "--out", b);
    struct test_run r3 = MSDIFF("init", "--preset", "tiny-ms", "--seed", "2", "--out", c);
    test_expect_ok(&r1);
    test_expect_ok(&r2);
    test_expect_ok(&r3);
    size_t na, nb, nc;
    char *da = test_read_file(a, &na), *db = test_read_file(b, &nb), *dc = test_read_file(c, &nc);
    ck_assert_msg(na == nb && !memcmp(da, db, na), "init --seed 1 twice gives different files (%zu, %zu bytes)",
                  na, nb);
    ck_assert_msg(na != nc || memcmp(da, dc, na), "init --seed 1 and --seed 2 give the same file");
    free(da);
    free(db);
    free(dc);
    test_run_free(&r1);
    test_run_free(&r2);
    test_run_free(&r3);
}
END_TEST

START_TEST(init_overrides) {
    const char *ck = test_path("over.safetensors");
    MSDIFF_OK("init", "--preset", "tiny-ms", "--decoders", "8,8,4", "--boundaries", "0.5,2", "--out", ck);
    struct test_run r = MSDIFF("info", "--model", ck);
    test_expect_ok(&r);
    ck_assert_msg(strstr(line_of(r.out, "decoder widths"), "8, 8, 4"), "--decoders not applied: %s", r.out);
    ck_assert_msg(strstr(line_of(r.out, "boundaries"), "0.5, 2"), "--boundaries not applied: %s", r.out);
    ck_assert_msg(line_of(r.out, "stage 2 ")[0] && !line_of(r.out, "stage 3 ")[0], "want 3 stages: %s", r.out);
    test_run_free(&r);
    unlink(ck);

    MSDIFF_OK("init", "--preset", "tiny", "--separate", "--decoders", "8,4", "--boundaries", "1", "--out", ck);
    r = MSDIFF("info", "--model", ck);
    ck_assert_msg(strstr(line_of(r.out, "kind"), "separate") && line_of(r.out, "network 1")[0],
                  "--separate not applied: %s", r.out);
    test_run_free(&r);
    unlink(ck);

    // bad lines: each names the flag, and nothing is written
    const char *bad[][3] = {
        {"--boundaries", "1,2", "--boundaries"}, // 2 stages need 1 boundary
        {"--decoders", "8,8,4", "--boundaries"}, // a new stage count needs boundaries
        {"--decoders", "8,x", "--decoders"},
        {"--decoders", "8,,4", "--decoders"},
        {"--boundaries", "nan", "--boundaries"},
        {"--seed", "-1", "--seed"},
        {"--seed", "12abc", "--seed"},
        {"--seed", "99999999999999999999999", "--seed"},
        {"--decoders", "6", "GroupNorm"}, // valid flags, invalid network: the config's message
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = MSDIFF("init", "--preset", "tiny-ms", "--out", ck, bad[i][0], bad[i][1]);
        TEST_EXPECT_FAIL(&r, 2, bad[i][2]);
        ck_assert_msg(!test_exists(ck), "'%s' failed but wrote %s", r.line, ck);
        test_run_free(&r);
    }
    FAILS(2, "missing --out", "init", "--preset", "tiny");
    FAILS(2, "missing --preset", "init", "--out", ck);
    r = MSDIFF("init", "--preset", "nosuch", "--out", ck);
    ck_assert_msg((r.status == 1 || r.status == 2) && strstr(r.err, "tiny-ms"), "unknown preset: %d %s", r.status,
                  r.err);
    test_run_free(&r);
    FAILS(1, "no/such/dir.safetensors", "init", "--preset", "tiny", "--out", test_path("no/such/dir.safetensors"));
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// denoise

#define NB 3 // images in the test input
#define IMG (2 * 8 * 8) // floats per image of tiny and tiny-ms

static void write_input(const char *path, const char *name, int64_t n, int64_t c, int64_t r, uint64_t seed) {
    size_t count = (size_t)(n * c * r * r);
    float *x = malloc(count * sizeof(float));
    fill_normal(x, count, seed, 1.0f);
    struct msd_st_entry e = {.name = name, .ndim = 4, .shape = {n, c, r, r}, .data = x};
    ck_assert_msg(msd_st_write(path, &e, 1, NULL, NULL, 0) == 0, "%s", msd_last_error());
    free(x);
}

// D of the checkpoint at sigma on x of the file, computed in this process.
static void denoise_here(const char *ck, const char *input, double sigma, float *D) {
    struct msd_model m;
    ck_assert_msg(msd_checkpoint_load(&m, ck, &msd_backend_ref) == 0, "%s", msd_last_error());
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, input) == 0, "%s", msd_last_error());
    float x[NB * IMG];
    const int64_t shape[4] = {NB, 2, 8, 8};
    ck_assert_msg(msd_st_get_f32(&f, "x", 4, shape, x) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_model_plan(&m, NB, false) == 0, "%s", msd_last_error());
    float *dx = m.be->alloc(NB * IMG), *dD = m.be->alloc(NB * IMG);
    m.be->upload(dx, x, NB * IMG);
    double sig[NB] = {sigma, sigma, sigma};
    struct msd_forward_opts o = {.train = false};
    ck_assert_msg(msd_denoise_forward(&m, msd_config_stage_of(&m.cfg, sigma), dD, dx, sig, &o) == 0, "%s",
                  msd_last_error());
    m.be->download(D, dD, NB * IMG);
    m.be->release(dx);
    m.be->release(dD);
    msd_st_free(&f);
    msd_model_free(&m);
}

// D and the metadata of an output file.
static void read_output(const char *path, float *D, const char *sigma, const char *model) {
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "%s", msd_last_error());
    const int64_t shape[4] = {NB, 2, 8, 8};
    ck_assert_msg(msd_st_get_f32(&f, "D", 4, shape, D) == 0, "%s", msd_last_error());
    const char *s = msd_st_meta(&f, "sigma"), *m = msd_st_meta(&f, "model");
    ck_assert_msg(s && !strcmp(s, sigma), "%s: metadata sigma is '%s', want '%s'", path, s ? s : "(none)", sigma);
    ck_assert_msg(m && !strcmp(m, model), "%s: metadata model is '%s', want '%s'", path, m ? m : "(none)", model);
    msd_st_free(&f);
}

static void check_denoise(const char *preset, const char *sigma_text) {
    const char *ck = test_path("dn.safetensors"), *in = test_path("dn-x.safetensors");
    const char *o1 = test_path("dn-1.safetensors"), *o2 = test_path("dn-2.safetensors");
    const char *o3 = test_path("dn-3.safetensors");
    MSDIFF_OK("init", "--preset", preset, "--seed", "7", "--out", ck);
    write_input(in, "x", NB, 2, 8, 11);
    // the in-process reference below runs on ref, so the CLI is asked for ref too
    struct test_run a = MSDIFF("denoise", "--model", ck, "--input", in, "--sigma", sigma_text, "--out", o1,
                               "--backend", "ref");
    struct test_run b = MSDIFF("denoise", "--model", ck, "--input", in, "--sigma", sigma_text, "--out", o2,
                               "--backend", "ref");
    struct test_run c = MSDIFF("denoise", "--model", ck, "--input", in, "--sigma", sigma_text, "--out", o3,
                               "--batch", "2", "--backend", "ref");
    test_expect_ok(&a);
    test_expect_ok(&b);
    test_expect_ok(&c);
    size_t n1, n2;
    char *f1 = test_read_file(o1, &n1), *f2 = test_read_file(o2, &n2);
    ck_assert_msg(n1 == n2 && !memcmp(f1, f2, n1), "%s: two denoise runs give different files", preset);
    float got[NB * IMG], batched[NB * IMG], want[NB * IMG];
    read_output(o1, got, sigma_text, ck);
    read_output(o3, batched, sigma_text, ck);
    denoise_here(ck, in, strtod(sigma_text, NULL), want);
    ck_assert_msg(!memcmp(got, want, sizeof want), "%s sigma %s: msdiff denoise differs from msd_denoise_forward "
                  "in process", preset, sigma_text);
    ck_assert_msg(!memcmp(batched, want, sizeof want), "%s sigma %s: --batch 2 (chunks 2 + 1) differs from the "
                  "whole batch", preset, sigma_text);
    ck_assert_msg(strstr(c.out, "batch 2"), "denoise --batch 2 does not report its batch: %s", c.out);
    free(f1);
    free(f2);
    test_run_free(&a);
    test_run_free(&b);
    test_run_free(&c);
}

START_TEST(denoise_matches_library) {
    check_denoise("tiny", "0.7");
    check_denoise("tiny-ms", "0.25"); // stage 0
    check_denoise("tiny-ms", "3");    // stage 1
}
END_TEST

START_TEST(denoise_bad_input) {
    const char *ck = test_path("bad.safetensors"), *out = test_path("bad-out.safetensors");
    MSDIFF_OK("init", "--preset", "tiny", "--out", ck);
    struct test_run r;
    // wrong shapes and a missing tensor: a failure (1) naming the file, the tensor and the shape
    const struct { const char *name; int64_t n, c, res; const char *needle; } files[] = {
        {"x", 2, 3, 8, "[2, 3, 8, 8]"},
        {"x", 2, 2, 4, "[2, 2, 4, 4]"},
        {"y", 2, 2, 8, "no tensor \"x\""},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const char *in = test_path("bad-x.safetensors");
        write_input(in, files[i].name, files[i].n, files[i].c, files[i].res, 5);
        r = MSDIFF("denoise", "--model", ck, "--input", in, "--sigma", "1", "--out", out);
        TEST_EXPECT_FAIL(&r, 1, files[i].needle);
        ck_assert_msg(strstr(r.err, in) && strstr(r.err, "[N, 2, 8, 8]"), "'%s': message should name the file and "
                      "the expected shape: %s", r.line, r.err);
        ck_assert_msg(!test_exists(out), "'%s' failed but wrote %s", r.line, out);
        test_run_free(&r);
    }
    const char *in = test_path("good-x.safetensors");
    write_input(in, "x", 2, 2, 8, 5);
    // bad command lines: status 2 naming the flag
    const char *sigmas[] = {"0", "-1", "nan", "inf", "abc", "1e999"};
    for (size_t i = 0; i < sizeof sigmas / sizeof sigmas[0]; i++) {
        r = MSDIFF("denoise", "--model", ck, "--input", in, "--sigma", sigmas[i], "--out", out);
        TEST_EXPECT_FAIL(&r, 2, "--sigma");
        test_run_free(&r);
    }
    FAILS(2, "missing --model", "denoise", "--input", in, "--sigma", "1", "--out", out);
    FAILS(2, "--bogus", "denoise", "--model", ck, "--input", in, "--sigma", "1", "--out", out, "--bogus", "1");
    FAILS(2, "--batch", "denoise", "--model", ck, "--input", in, "--sigma", "1", "--out", out, "--batch", "0");
    FAILS(2, "--backend", "denoise", "--model", ck, "--input", in, "--sigma", "1", "--out", out, "--backend", "nosuch");
    // files that are missing or not safetensors: a failure naming the file
    FAILS(1, "absent.safetensors", "denoise", "--model", test_path("absent.safetensors"), "--input", in, "--sigma",
          "1", "--out", out);
    const char *junk = test_path("junk.safetensors"), *text = "this is not a safetensors file";
    test_write_file(junk, text, strlen(text));
    // the input's messages call it the input, never a checkpoint
    r = MSDIFF("denoise", "--model", ck, "--input", junk, "--sigma", "1", "--out", out);
    TEST_EXPECT_FAIL(&r, 1, test_pathf("input '%s': ", junk));
    ck_assert_msg(!strstr(r.err, "checkpoint"), "the input is called a checkpoint: %s", r.err);
    test_run_free(&r);
    // a NaN in x would come back as a NaN in D: refused, naming the element
    float x[2 * IMG];
    fill_normal(x, 2 * IMG, 6, 1.0f);
    x[37] = NAN;
    const struct msd_st_entry e = {.name = "x", .ndim = 4, .shape = {2, 2, 8, 8}, .data = x};
    ck_assert_msg(msd_st_write(junk, &e, 1, NULL, NULL, 0) == 0, "%s", msd_last_error());
    FAILS(1, "\"x\" element 37 is nan", "denoise", "--model", ck, "--input", junk, "--sigma", "1", "--out", out);
    ck_assert_msg(!test_exists(out), "a failed denoise wrote %s", out);
}
END_TEST

// info and denoise take a run folder for --model, as sample, eval and export do: its ema.safetensors,
// which the output then names. The folder here holds a copy of a checkpoint, which is what msdiff
// train leaves there.
START_TEST(run_folder_as_model) {
    const char *ck = test_path("rf.safetensors"), *dir = test_subdir("rf-run");
    const char *ema = test_path("rf-run/ema.safetensors"), *in = test_path("rf-x.safetensors");
    const char *o1 = test_path("rf-1.safetensors"), *o2 = test_path("rf-2.safetensors");
    MSDIFF_OK("init", "--preset", "tiny-ms", "--seed", "5", "--out", ck);
    size_t n;
    char *bytes = test_read_file(ck, &n);
    test_write_file(ema, bytes, n);
    free(bytes);
    struct test_run a = MSDIFF("info", "--model", ck), b = MSDIFF("info", "--model", dir);
    test_expect_ok(&a);
    test_expect_ok(&b);
    const char *ta = strchr(a.out, '\n'), *tb = strchr(b.out, '\n');
    ck_assert_msg(ta && tb && !strcmp(ta, tb), "info of the folder differs from info of the file:\n%s\n---\n%s",
                  a.out, b.out);
    ck_assert_msg(strstr(line_of(b.out, "checkpoint"), ema), "info of a folder does not name %s: %s", ema, b.out);
    test_run_free(&a);
    test_run_free(&b);
    b = MSDIFF("info", "--model", dir, "--json");
    test_expect_ok(&b);
    cJSON *j = cJSON_Parse(b.out);
    const char *named = cJSON_GetStringValue(cJSON_GetObjectItem(j, "checkpoint"));
    ck_assert_msg(named && !strcmp(named, ema), "info --json of a folder: %s", b.out);
    cJSON_Delete(j);
    test_run_free(&b);

    write_input(in, "x", NB, 2, 8, 13);
    MSDIFF_OK("denoise", "--model", ck, "--input", in, "--sigma", "0.5", "--out", o1, "--backend", "ref");
    MSDIFF_OK("denoise", "--model", dir, "--input", in, "--sigma", "0.5", "--out", o2, "--backend", "ref");
    float from_file[NB * IMG], from_dir[NB * IMG];
    read_output(o1, from_file, "0.5", ck);
    read_output(o2, from_dir, "0.5", ema);
    ck_assert_msg(!memcmp(from_file, from_dir, sizeof from_dir), "denoise of the folder differs from the file's");

    // a folder without ema.safetensors: the message names the file looked for
    const char *empty = test_subdir("rf-empty");
    FAILS(1, "rf-empty/ema.safetensors", "info", "--model", empty);
    FAILS(1, "rf-empty/ema.safetensors", "denoise", "--model", empty, "--input", in, "--sigma", "1", "--out",
          test_path("rf-3.safetensors"));
    ck_assert(!test_exists(test_path("rf-3.safetensors")));
}
END_TEST

// eval's default classifier is found beside the program, so that eval runs from any folder; a copy of
// the program in a folder without models/ (run from there too) says where it looked.
START_TEST(eval_default_classifier_beside_program) {
    char root[4096];
    ck_assert(getcwd(root, sizeof root) != NULL); // tests run from the repository root, where msdiff is
    const char *pngs = test_subdir("eval-pngs");
    float img[28 * 28];
    for (int i = 0; i < 4; i++) {
        fill_uniform(img, 28 * 28, 70 + (uint64_t)i, -1, 1);
        ck_assert_msg(msd_png_write(test_pathf("%s/img%d.png", pngs, i), img, 1, 28, 28) == 0, "%s",
                      msd_last_error());
    }
    const char *cmd = test_pathf("cd '%s' && exec '%s/msdiff' eval --images '%s' --ref '%s' --n 4 --json --backend "
                                 "ref", test_tmpdir(), root, pngs, pngs);
    struct test_run r = test_run_argv((const char *const[]){"/bin/sh", "-c", cmd, NULL});
    test_expect_ok(&r);
    cJSON *j = cJSON_Parse(r.out);
    const char *cls = cJSON_GetStringValue(cJSON_GetObjectItem(j, "classifier"));
    const char *want = test_pathf("%s/models/classifier-fmnist.safetensors", root);
    ck_assert_msg(cls && !strcmp(cls, want), "eval from %s used classifier '%s', want %s: %s", test_tmpdir(),
                  cls ? cls : "(none)", want, r.out);
    cJSON_Delete(j);
    test_run_free(&r);

    size_t n;
    char *exe = test_read_file("msdiff", &n);
    const char *copy = test_path("msdiff-copy");
    test_write_file(copy, exe, n);
    free(exe);
    ck_assert(chmod(copy, 0755) == 0);
    cmd = test_pathf("cd '%s' && exec '%s' eval --images '%s' --ref '%s' --n 4", test_tmpdir(), copy, pngs, pngs);
    r = test_run_argv((const char *const[]){"/bin/sh", "-c", cmd, NULL});
    TEST_EXPECT_FAIL(&r, 1, "models/classifier-fmnist.safetensors", test_tmpdir(), "--classifier");
    test_run_free(&r);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// sample: every flag and output checked before the model is loaded and sampled

// Each sampler flag out of its range names the flag and the range, with status 2 and no image.
START_TEST(sample_flags_checked) {
    const char *ck = test_path("smp.safetensors"), *grid = test_path("smp.png");
    MSDIFF_OK("init", "--preset", "mini", "--out", ck);
    const char *bad[][4] = { // flag, value, what the message must hold
        {"--sigma-min", "1e-300", "--sigma-min", "[1e-30, 1e30]"},
        {"--sigma-min", "0", "--sigma-min", "[1e-30, 1e30]"},
        {"--sigma-max", "1e31", "--sigma-max", "[1e-30, 1e30]"},
        {"--sigma-max", "0.001", "--sigma-max", "above --sigma-min"},
        {"--sigma-max", "1e999", "--sigma-max", "finite"},
        {"--rho", "1e-300", "--rho", "strictly decreasing"}, // 80^(1/rho) overflows
        {"--rho", "1e300", "--rho", "strictly decreasing"},  // every sigma^(1/rho) is 1
        {"--rho", "0", "--rho", "> 0"},
        {"--s-max", "nan", "--s-max", "or inf"},
        {"--s-max", "-inf", "--s-max", "or inf"},
        {"--s-min", "inf", "--s-min", "finite"},
        {"--s-min", "-1", "--s-min", "[0, 1e30]"},
        {"--s-noise", "1e300", "--s-noise", "(0, 10]"},
        {"--churn", "nan", "--churn", "finite"},
        {"--churn", "-1", "--churn", ">= 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct test_run r = MSDIFF("sample", "--model", ck, "--grid", grid, "--seeds", "0", bad[i][0], bad[i][1]);
        TEST_EXPECT_FAIL(&r, 2, bad[i][2], bad[i][3]);
        test_run_free(&r);
    }
    // a flag of another schedule or sampler would be ignored: refused instead
    FAILS(2, "--rho applies to --schedule edm", "sample", "--model", ck, "--grid", grid, "--schedule", "vp-time",
          "--rho", "3");
    FAILS(2, "--churn applies to --sampler heun", "sample", "--model", ck, "--grid", grid, "--sampler", "euler",
          "--churn", "1");
    const char *seeds[] = {"1,", ",1", "1,,2", ",", "0-3,"};
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        struct test_run r = MSDIFF("sample", "--model", ck, "--grid", grid, "--seeds", seeds[i]);
        TEST_EXPECT_FAIL(&r, 2, "--seeds", "empty");
        test_run_free(&r);
    }
    ck_assert_msg(!test_exists(grid), "a refused command line wrote %s", grid);
    // the ends of the ranges work: --s-max inf written out, S_noise 10, the smallest sigma_min with rho 7
    MSDIFF_OK("sample", "--model", ck, "--grid", grid, "--seeds", "0,2", "--steps", "2", "--churn", "1", "--s-max",
              "inf", "--s-noise", "10", "--sigma-min", "1e-30", "--backend", "ref");
    ck_assert_msg(test_exists(grid), "sample did not write %s", grid);
}
END_TEST

// Where the images go, and whether PNG can hold them, is known before sampling: a bad --grid or
// --outdir, a model of 2 channels, a grid too large for PNG fail at once (one line on stderr, no
// progress line, nothing written).
START_TEST(sample_outputs_checked_first) {
    const char *ck = test_path("out.safetensors"), *two = test_path("two.safetensors");
    MSDIFF_OK("init", "--preset", "mini", "--out", ck);
    MSDIFF_OK("init", "--preset", "tiny", "--out", two); // 2 image channels
    const char *missing = test_path("no-such-dir/g.png"), *dir = test_subdir("out-dir");
    const char *fails[][6] = { // output flag, path, another flag and value, what the message must hold (2)
        {"--grid", missing, "--seeds", "0-3", missing, "does not exist"},
        {"--grid", dir, "--seeds", "0-3", dir, "is a folder"},
        {"--outdir", test_path("no-such-dir/sub"), "--seeds", "0-3", "no-such-dir", "does not exist"},
        {"--outdir", ck, "--seeds", "0-3", ck, "not a folder"},
        {"--grid", test_path("big.png"), "--cols", "1000", "30002x", "16384"}, // 1000 x (28 + 2) + 2 wide
        {"--grid", test_path("link.png"), "--seeds", "0-3", "link.png", "symbolic link"}, // renamed over: refused
    };
    ck_assert(symlink(test_path("real.png"), test_path("link.png")) == 0);
    for (size_t i = 0; i < sizeof fails / sizeof fails[0]; i++) {
        struct test_run r = MSDIFF("sample", "--model", ck, fails[i][0], fails[i][1], fails[i][2], fails[i][3],
                                   "--steps", "1", "--backend", "ref");
        TEST_EXPECT_FAIL(&r, 1, fails[i][0], fails[i][4], fails[i][5]);
        ck_assert_msg(!strstr(r.err, "sampling"), "'%s' sampled before it failed: %s", r.line, r.err);
        test_run_free(&r);
    }
    struct stat st;
    ck_assert(!test_exists(test_path("no-such-dir")) && !test_exists(test_path("big.png")));
    ck_assert(lstat(test_path("link.png"), &st) == 0 && S_ISLNK(st.st_mode) && !test_exists(test_path("real.png")));
    struct test_run r = MSDIFF("sample", "--model", two, "--outdir", test_path("two"), "--seeds", "0", "--steps",
                               "1", "--backend", "ref");
    TEST_EXPECT_FAIL(&r, 1, "2 channels", "PNG");
    ck_assert_msg(!strstr(r.err, "sampling") && !test_exists(test_path("two")), "'%s' sampled or created its "
                  "folder before it failed: %s", r.line, r.err);
    test_run_free(&r);
    if (geteuid() != 0) { // root writes through permission bits, so this holds only for other users
        const char *ro = test_subdir("read-only");
        ck_assert(chmod(ro, 0555) == 0);
        r = MSDIFF("sample", "--model", ck, "--grid", test_pathf("%s/g.png", ro), "--seeds", "0");
        TEST_EXPECT_FAIL(&r, 1, "--grid", "not writable");
        test_run_free(&r);
        chmod(ro, 0755);
    }
    // a missing --outdir whose parent exists is created, and gets the images
    const char *made = test_path("made");
    MSDIFF_OK("sample", "--model", ck, "--outdir", made, "--seeds", "4", "--steps", "1", "--backend", "ref");
    ck_assert_msg(test_exists(test_path("made/seed000004.png")), "--outdir %s was not created and filled", made);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Out of memory for a batch

// `./msdiff args` under a cap of 1.5 GB of address space, so that a batch of 65536 images fails to
// plan on any machine (mini needs tens of GB for it).
static struct test_run msdiff_capped(const char *args) {
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "ulimit -v 1500000 && exec ./msdiff %s", args);
    return test_run_argv((const char *const[]){"/bin/sh", "-c", cmd, NULL});
}

// Planning a batch that does not fit: a new run and sample are told to try a smaller --batch (the run
// leaves no run folder behind); a resumed run, whose batch its state fixes (and which refuses --batch),
// is told so instead, and is never pointed at --batch.
START_TEST(train_batch_out_of_memory) {
#if defined(__SANITIZE_ADDRESS__)
    printf("train_batch_out_of_memory: SKIPPED, AddressSanitizer needs more address space than the cap\n");
    return;
#endif
    const char *fresh = test_path("oom-new"), *resumed = test_subdir("oom-resume");
    char args[1024];
    snprintf(args, sizeof args, "train --preset mini --steps 2 --batch 65536 --quiet --backend ref --out %s", fresh);
    struct test_run r = msdiff_capped(args);
    TEST_EXPECT_FAIL(&r, 1, "activations for a batch of 65536 images", "try a smaller --batch");
    test_run_free(&r);
    ck_assert_msg(!test_exists(fresh), "the failed run left %s behind", fresh);
    // sample's batch is its --batch too
    MSDIFF_OK("init", "--preset", "mini", "--out", test_path("oom.safetensors"));
    snprintf(args, sizeof args, "sample --model %s --seeds 0-4095 --batch 4096 --steps 1 --backend ref --grid %s",
             test_path("oom.safetensors"), test_path("oom.png"));
    r = msdiff_capped(args);
    TEST_EXPECT_FAIL(&r, 1, "activations for a batch of 4096 images", "try a smaller --batch");
    test_run_free(&r);

    // a run whose state holds a batch of 65536, as a run started on a larger machine would
    struct msd_config c;
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    ck_assert(msd_config_preset(&c, "mini") == 0 && msd_model_create(&m, &c, &msd_backend_ref) == 0);
    msd_model_init_weights(&m, 1);
    ck_assert(msd_train_state_init(&st, &m) == 0);
    msd_train_defaults(&o);
    o.batch = 65536;
    const struct msd_run_opts ro = {.dir = resumed, .data = "fmnist", .steps = 2};
    ck_assert_msg(msd_run_create(&m, &o, &ro) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_train_save(test_pathf("%s/state.safetensors", resumed), &m, &st, &o) == 0, "%s",
                  msd_last_error());
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
    snprintf(args, sizeof args, "train --resume --quiet --backend ref --out %s", resumed);
    r = msdiff_capped(args);
    TEST_EXPECT_FAIL(&r, 1, "activations for a batch of 65536 images",
                     "the run's batch of 65536 images is fixed by its state");
    ck_assert_msg(!strstr(r.err, "--batch"), "a resumed run is pointed at --batch: %s", r.err);
    test_run_free(&r);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Dispatch and help

START_TEST(dispatch_and_help) {
    const char *cmds[] = {"info", "init", "denoise", "backends", "version", "help"};
    struct test_run r = MSDIFF(NULL);
    ck_assert_msg(r.status == 2 && r.out[0] == '\0', "msdiff without a command: status %d, stdout '%s'", r.status,
                  r.out);
    for (size_t i = 0; i < 6; i++)
        ck_assert_msg(strstr(r.err, cmds[i]), "usage on stderr does not list '%s': %s", cmds[i], r.err);
    test_run_free(&r);
    struct test_run h = MSDIFF("help"), h2 = MSDIFF("--help");
    test_expect_ok(&h);
    test_expect_ok(&h2);
    ck_assert_msg(!strcmp(h.out, h2.out), "msdiff help and msdiff --help differ");
    for (size_t i = 0; i < 6; i++)
        ck_assert_msg(strstr(h.out, cmds[i]), "msdiff help does not list '%s': %s", cmds[i], h.out);
    test_run_free(&h);
    test_run_free(&h2);
    // every command's help: the same both ways, with its usage, every flag and an example
    const char *flags[][7] = {
        {"--preset", "--model", "--json", NULL},
        {"--preset", "--out", "--seed", "--decoders", "--boundaries", "--separate", NULL},
        {"--model", "--input", "--sigma", "--out", "--backend", "--batch", NULL},
        {NULL}, {NULL}, {NULL},
    };
    for (size_t i = 0; i < 6; i++) {
        struct test_run a = MSDIFF("help", cmds[i]), b = MSDIFF(cmds[i], "--help");
        test_expect_ok(&a);
        test_expect_ok(&b);
        ck_assert_msg(!strcmp(a.out, b.out), "msdiff help %s and msdiff %s --help differ", cmds[i], cmds[i]);
        char usage[64];
        snprintf(usage, sizeof usage, "usage: msdiff %s", cmds[i]);
        ck_assert_msg(strstr(a.out, usage) && strstr(a.out, "example"), "help %s lacks usage or example: %s",
                      cmds[i], a.out);
        for (int k = 0; flags[i][k]; k++)
            ck_assert_msg(strstr(a.out, flags[i][k]), "help %s does not describe %s", cmds[i], flags[i][k]);
        test_run_free(&a);
        test_run_free(&b);
    }
    FAILS(2, "nosuch", "help", "nosuch");
    FAILS(2, "nosuch", "nosuch");
    r = MSDIFF("version");
    ck_assert_msg(r.status == 0 && !strncmp(r.out, "msdiff ", 7), "version: %d %s", r.status, r.out);
    test_run_free(&r);
    r = MSDIFF("backends");
    ck_assert_msg(r.status == 0 && strstr(r.out, "ref   available"), "backends: %d %s", r.status, r.out);
    test_run_free(&r);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// cli.h in process

START_TEST(cli_numbers) {
    long long v;
    uint64_t u;
    double d;
    ck_assert_msg(cli_to_ll("42", 0, 100, &v) == 0 && v == 42, "42");
    ck_assert_msg(cli_to_ll("-3", -5, 5, &v) == 0 && v == -3, "-3");
    const char *bad_ints[] = {"", " 1", "1 ", "+1", "1.0", "1e3", "0x10", "12abc", "101", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad_ints / sizeof bad_ints[0]; i++)
        ck_assert_msg(cli_to_ll(bad_ints[i], 0, 100, &v) == -1, "'%s' read as an integer in 0..100", bad_ints[i]);
    ck_assert_msg(cli_to_u64("18446744073709551615", &u) == 0 && u == UINT64_MAX, "UINT64_MAX");
    const char *bad_u64[] = {"-1", "18446744073709551616", "", "1x"};
    for (size_t i = 0; i < sizeof bad_u64 / sizeof bad_u64[0]; i++)
        ck_assert_msg(cli_to_u64(bad_u64[i], &u) == -1, "'%s' read as a uint64", bad_u64[i]);
    ck_assert_msg(cli_to_double("2.5e-1", &d) == 0 && d == 0.25, "2.5e-1");
    ck_assert_msg(cli_to_double("1,5", &d) == -1 && cli_to_double("", &d) == -1 && cli_to_double(" 1", &d) == -1,
                  "a bad double was accepted");
    char buf[CLI_NUM_BUF];
    const struct { uint64_t v; const char *s; } counts[] = {
        {0, "0"}, {999, "999"}, {1000, "1,000"}, {55732739, "55,732,739"},
        {21190213632ull, "21,190,213,632"}, {UINT64_MAX, "18,446,744,073,709,551,615"},
    };
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
        ck_assert_msg(!strcmp(cli_fmt_count(counts[i].v, buf), counts[i].s), "%s printed as %s", counts[i].s, buf);
    ck_assert_msg(!strcmp(cli_fmt_real(2.5103f, true, buf), "2.5103"), "2.5103f printed as %s", buf);
    ck_assert_msg(!strcmp(cli_fmt_real(0.1, false, buf), "0.1"), "0.1 printed as %s", buf);
    ck_assert_msg(strtod(cli_fmt_real(1.0 / 3, false, buf), NULL) == 1.0 / 3, "1/3 does not round-trip: %s", buf);
}
END_TEST

// cli_parse on the words a user may type for a number or a list: NaN, the infinities and overflow are
// refused (but +inf where the option allows it), and so is an empty list entry; a refused value leaves
// the destination as it was.
START_TEST(cli_parse_nonfinite_and_empty) {
    const char *bad_doubles[] = {"nan", "NaN", "-nan", "inf", "-inf", "infinity", "1e999", "-1e999"};
    for (size_t i = 0; i < sizeof bad_doubles / sizeof bad_doubles[0]; i++) {
        double x = 7, bound = 7;
        struct cli_opt o[] = {{.flag = "--x", .type = CLI_DOUBLE, .dst = &x},
                              {.flag = "--bound", .type = CLI_DOUBLE, .dst = &bound, .inf_ok = true}};
        char *args[] = {"--x", (char *)bad_doubles[i]};
        ck_assert_msg(cli_parse("test", 2, args, o, 2) == CLI_USAGE && x == 7, "--x %s accepted: %g", args[1], x);
        args[0] = "--bound";
        const bool want = !strcmp(bad_doubles[i], "inf") || !strcmp(bad_doubles[i], "infinity") ||
                          !strcmp(bad_doubles[i], "1e999");
        const int rc = cli_parse("test", 2, args, o, 2);
        ck_assert_msg(want ? rc == 0 && bound == INFINITY : rc == CLI_USAGE && bound == 7,
                      "--bound %s (inf allowed): status %d, value %g", args[1], rc, bound);
    }
    double x = 0;
    struct cli_opt ok[] = {{.flag = "--x", .type = CLI_DOUBLE, .dst = &x}};
    char *tiny[] = {"--x=1e-300"};
    ck_assert_msg(cli_parse("test", 1, tiny, ok, 1) == 0 && x == 1e-300, "1e-300 is finite and was refused");

    const char *bad_lists[] = {"1,", ",1", "1,,2", ",", "", "1,nan", "inf,2", "1,1e999"};
    for (size_t i = 0; i < sizeof bad_lists / sizeof bad_lists[0]; i++) {
        struct cli_ints li = {0};
        struct cli_doubles ld = {0};
        struct cli_opt o[] = {{.flag = "--i", .type = CLI_INTS, .dst = &li, .lo = 0, .hi = 9, .max = 4},
                              {.flag = "--d", .type = CLI_DOUBLES, .dst = &ld, .max = 4, .inf_ok = true}};
        char *di[] = {"--d", (char *)bad_lists[i]}, *ii[] = {"--i", (char *)bad_lists[i]};
        ck_assert_msg(cli_parse("test", 2, di, o, 2) == CLI_USAGE && ld.n == 0, "--d '%s' accepted", bad_lists[i]);
        ck_assert_msg(cli_parse("test", 2, ii, o, 2) == CLI_USAGE && li.n == 0, "--i '%s' accepted", bad_lists[i]);
    }
}
END_TEST

// export --fp16: a checkpoint of half the size that loads as the same network with every weight
// rounded to F16 (msd_f32_to_f16, checked bit for bit against the format in test_safetensors), the
// run-folder form, and a weight F16 cannot hold, which fails without a file.
START_TEST(export_fp16) {
    const char *src = test_path("exp-src.safetensors"), *half = test_path("exp-half.safetensors");
    MSDIFF_OK("init", "--preset", "tiny-ms", "--seed", "4", "--out", src);
    struct test_run r = MSDIFF("export", "--model", src, "--out", half, "--fp16");
    test_expect_ok(&r);
    ck_assert_msg(strstr(r.out, "as F16") && strstr(r.out, "largest relative change"), "export printed: %s", r.out);
    test_run_free(&r);
    struct msd_model a, b;
    ck_assert_msg(msd_checkpoint_load(&a, src, &msd_backend_ref) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_checkpoint_load(&b, half, &msd_backend_ref) == 0, "%s", msd_last_error());
    ck_assert_msg(a.n_floats == b.n_floats && !memcmp(&a.cfg, &b.cfg, sizeof a.cfg), "the config changed");
    long moved = 0;
    for (size_t i = 0; i < a.n_floats; i++) {
        uint16_t h;
        ck_assert(msd_f32_to_f16(a.w[i], &h) == 0);
        ck_assert_msg(b.w[i] == msd_f16_to_f32(h), "weight %zu: %a exported as %a", i, (double)a.w[i],
                      (double)b.w[i]);
        moved += b.w[i] != a.w[i];
    }
    ck_assert_msg(moved > 0, "no weight changed: the file is not F16");
    size_t n_src, n_half;
    free(test_read_file(src, &n_src));
    free(test_read_file(half, &n_half));
    ck_assert_msg(n_half < n_src * 6 / 10, "the F16 file has %zu bytes, the F32 one %zu", n_half, n_src);

    // a weight beyond F16's range: an error naming F16, and no file
    a.w[7] = 1e6f;
    const char *big = test_path("exp-big.safetensors"), *out = test_path("exp-none.safetensors");
    ck_assert_msg(msd_checkpoint_save(&a, big, NULL, NULL, 0) == 0, "%s", msd_last_error());
    FAILS(1, "F16", "export", "--model", big, "--out", out, "--fp16");
    ck_assert_msg(!test_exists(out), "a failed export left %s", out);
    FAILS(2, "--out", "export", "--model", src);

    // a run folder means its ema.safetensors
    const char *dir = test_subdir("exp-run"), *ema = test_path("exp-run/ema.safetensors");
    const char *from_dir = test_path("exp-from-dir.safetensors");
    ck_assert_msg(msd_checkpoint_save(&b, ema, NULL, NULL, 0) == 0, "%s", msd_last_error());
    r = MSDIFF("export", "--model", dir, "--out", from_dir);
    test_expect_ok(&r);
    ck_assert_msg(strstr(r.out, "ema.safetensors") && strstr(r.out, "as F32"), "export of a folder printed: %s", r.out);
    test_run_free(&r);
    struct msd_model c;
    ck_assert_msg(msd_checkpoint_load(&c, from_dir, &msd_backend_ref) == 0, "%s", msd_last_error());
    ck_assert_msg(c.n_floats == b.n_floats && !memcmp(c.w, b.w, b.n_floats * sizeof(float)),
                  "the F32 export of the folder's ema.safetensors changed its weights");
    msd_model_free(&c);
    msd_model_free(&a);
    msd_model_free(&b);
}
END_TEST

int main(void) {
    test_tmpdir_make("cli"); // before the tests fork: they share it
    const TTest *tests[] = {
        info_paper_counts, info_json, info_bad_lines, init_info_roundtrip, init_deterministic,
        init_overrides, denoise_matches_library, denoise_bad_input, train_batch_out_of_memory, dispatch_and_help,
        cli_numbers, cli_parse_nonfinite_and_empty, export_fp16, sample_flags_checked, sample_outputs_checked_first,
        run_folder_as_model, eval_default_classifier_beside_program,
    };
    return run_tests("cli", 600, tests, TEST_COUNT(tests));
}
