// test_crash.c: a run folder survives any kill (common/cli/run.h). A training run of a micro network
// that saves after every step is killed with SIGKILL at seeded random moments, many of them inside a
// save, and resumed each time; it must end with the uninterrupted run's files, byte for byte, and a
// valid log.csv. Besides, what a run folder promises around a kill on its own: a new run's log holds
// its header before the first step, a resume repairs a log without one and drops rows past the state,
// and a resume removes the temporary files a killed save left.
//
// The killed runs are child processes (fork) of the test, which runs no network itself before it
// forks: OpenMP's threads do not survive a fork. Everything is on the ref backend, which is bit for
// bit deterministic.
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "common/cli/run.h"
#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/core/util.h"
#include "common/io/data.h"
#include "common/io/safetensors.h"
#include "testutil.h"

#define STEPS 60      // the run's target
#define SNAP_EVERY 2  // ema-step<step>.safetensors every other step
#define KILLS 10      // kills
#define KILL_SEED 20  // the seed of the kill schedule

// log.csv's header for a network of two stages: the format run.h describes.
static const char HEADER[] = "step,images,loss,loss_stage0,loss_stage1,lr,grad_norm,images_per_s,seconds\n";

// ---------------------------------------------------------------------------------------------------
// The run: a micro network (tiny-ms at 4x4 with 4 channels, two stages) on random images

static struct msd_config micro(void) {
    struct msd_config c;
    CHECK(msd_config_preset(&c, "tiny-ms") == 0, "%s", msd_last_error());
    c.img_resolution = 4, c.in_channels = c.out_channels = 1, c.model_channels = 4;
    c.n_levels = 1, c.channel_mult[0] = 1, c.n_attn = 0, c.channel_mult_emb = 1;
    c.dec_channels[0] = c.dec_channels[1] = 4;
    CHECK(msd_config_validate(&c) == 0, "%s", msd_last_error());
    return c;
}

static struct msd_run_opts run_opts(const char *dir, long steps) {
    return (struct msd_run_opts){.dir = dir, .data = "random 16x1x4x4, seed 3", .steps = steps, .ckpt_every = 1,
                                 .snapshot_every = SNAP_EVERY, .log_seconds = 0, .quiet = true};
}

// Continue the run in dir from its state.safetensors, or start it as a new run when it has none (one
// killed before its first save), and train to `steps`. 0, or -1 with a message.
static int train_run(const char *dir, long steps) {
    struct msd_dataset data;
    if (msd_data_random(&data, 16, 1, 4, 3) < 0) return -1;
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    const struct msd_run_opts r = run_opts(dir, steps);
    char state[TEST_PATH_MAX];
    snprintf(state, sizeof state, "%s/state.safetensors", dir);
    int rc;
    if (access(state, F_OK) == 0) {
        rc = msd_train_load(state, &m, &st, &o, &msd_backend_ref);
    } else {
        const struct msd_config c = micro();
        msd_train_defaults(&o);
        o.batch = 2, o.seed = 11, o.policy = MSD_POLICY_UNIFORM, o.lr_rampup = 16;
        rc = msd_model_create(&m, &c, &msd_backend_ref);
        if (rc == 0) {
            msd_model_init_weights(&m, 5);
            rc = msd_train_state_init(&st, &m);
            if (rc < 0) msd_model_free(&m);
        }
        if (rc == 0 && msd_run_create(&m, &o, &r) < 0) {
            msd_train_state_free(&st, &m);
            msd_model_free(&m);
            rc = -1;
        }
    }
    if (rc == 0) {
        rc = msd_run_train(&m, &st, &data, &o, &r);
        msd_train_state_free(&st, &m);
        msd_model_free(&m);
    }
    msd_data_free(&data);
    return rc;
}

// train_run(dir, STEPS) in a child process; its pid. The child exits 0 when it reached the target,
// 1 (with the message on stderr) when it failed.
static pid_t start_run(const char *dir) {
    pid_t pid = test_fork();
    if (pid == 0) {
        if (train_run(dir, STEPS) == 0) _exit(0);
        fprintf(stderr, "training in %s: %s\n", dir, msd_last_error());
        _exit(1);
    }
    return pid;
}

static int wait_run(pid_t pid) {
    int st;
    ck_assert_msg(waitpid(pid, &st, 0) == pid, "waitpid failed: %s", strerror(errno));
    return st;
}

// Draw i of the kill schedule, uniform in [0, 1).
static double draw(int i) { return msd_rng_u32(KILL_SEED, MSD_STREAM_TEST, (uint64_t)i) / 4294967296.0; }

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// ---------------------------------------------------------------------------------------------------
// Reading a run folder

// The names in dir that end in suffix, sorted, as one string "a b c" (empty when none).
static char *names_ending(const char *dir, const char *suffix) {
    char *names[256];
    int n = 0;
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot list %s: %s", dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        const size_t len = strlen(e->d_name), sl = strlen(suffix);
        if (len >= sl && !strcmp(e->d_name + len - sl, suffix) && n < 256) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    for (int i = 1; i < n; i++) // insertion sort: a handful of names
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1], names[j - 1] = t;
        }
    size_t size = 1;
    for (int i = 0; i < n; i++) size += strlen(names[i]) + 1;
    char *s = calloc(size, 1);
    for (int i = 0; i < n; i++) {
        if (i) strcat(s, " ");
        strcat(s, names[i]);
        free(names[i]);
    }
    return s;
}

// The step of a state file's metadata; 0 when dir has no state.safetensors.
static long state_step(const char *dir) {
    const char *path = test_pathf("%s/state.safetensors", dir);
    return test_exists(path) ? test_state_step(path) : 0;
}

// The step of the last whole row of dir's log.csv; 0 when it has none (or there is no log yet).
static long last_logged_step(const char *dir) {
    const char *path = test_pathf("%s/log.csv", dir);
    if (!test_exists(path)) return 0;
    char *text = test_read_file(path, NULL);
    long step = 0;
    for (char *p = text, *nl; (nl = strchr(p, '\n')); p = nl + 1)
        if (*p >= '1' && *p <= '9') step = strtol(p, NULL, 10);
    free(text);
    return step;
}

// Files a and b hold the same bytes.
static void expect_same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = test_read_file(a, &na), *y = test_read_file(b, &nb);
    size_t first = 0;
    while (first < na && first < nb && x[first] == y[first]) first++;
    ck_assert_msg(na == nb && first == na, "%s (%zu bytes) and %s (%zu bytes) differ from byte %zu", a, na, b, nb,
                  first);
    free(x);
    free(y);
}

// The lines of a log: its header, then rows. Each line keeps its '\n'; the text is the caller's.
struct log {
    char *text;
    char *line[4 * STEPS];
    int n;
};

static struct log read_log(const char *dir) {
    struct log g = {.text = test_read_file(test_pathf("%s/log.csv", dir), NULL)};
    for (char *p = g.text; *p;) {
        char *nl = strchr(p, '\n');
        ck_assert_msg(nl != NULL, "%s/log.csv: the last line has no newline: '%s'", dir, p);
        ck_assert_msg(g.n < 4 * STEPS, "%s/log.csv holds more than %d lines", dir, 4 * STEPS);
        g.line[g.n++] = p;
        p = nl + 1;
    }
    return g;
}

// The first `fields` comma-separated fields of a row, as a string (with the commas).
static const char *fields_of(const char *row, int fields) {
    const char *end = row;
    for (int k = 0; k < fields && end; k++) end = strchr(end + (k > 0), ',');
    ck_assert_msg(end != NULL, "row '%.*s' has fewer than %d fields", (int)strcspn(row, "\n"), row, fields + 1);
    return test_pathf("%.*s", (int)(end - row), row);
}

// The log of dir holds the header and then rows[0..n) exactly (the header's line and n rows), where
// rows hold the step counts; each row has the header's nine fields.
static void expect_log_steps(const char *dir, const long *steps, int n) {
    struct log g = read_log(dir);
    ck_assert_msg(g.n >= 1 && !strncmp(g.line[0], HEADER, strlen(HEADER)), "%s/log.csv does not start with its "
                  "header '%.*s': '%.*s'", dir, (int)strlen(HEADER) - 1, HEADER, g.n ? (int)strcspn(g.line[0], "\n")
                  : 0, g.n ? g.line[0] : "");
    ck_assert_msg(g.n - 1 == n, "%s/log.csv: %d rows, want %d", dir, g.n - 1, n);
    for (int i = 0; i < n; i++) {
        const char *row = g.line[1 + i];
        int commas = 0;
        for (const char *p = row; *p != '\n'; p++) commas += *p == ',';
        ck_assert_msg(commas == 8, "%s/log.csv row %d has %d fields, want 9: '%.*s'", dir, i + 1, commas + 1,
                      (int)strcspn(row, "\n"), row);
        ck_assert_msg(strtol(row, NULL, 10) == steps[i], "%s/log.csv row %d is of step %ld, want %ld", dir, i + 1,
                      strtol(row, NULL, 10), steps[i]);
    }
    free(g.text);
}

// ---------------------------------------------------------------------------------------------------
// 1. Killed at random, resumed each time: the uninterrupted run's files, byte for byte

// The finished run in dir holds what the uninterrupted one in ref does: state, EMA, snapshots and
// run.json byte for byte, no temporary file, and a log.csv of the header and one row per step (with
// log_seconds 0) with the same numbers (all but images/s and seconds, which are times).
static void expect_same_run(const char *ref, const char *dir) {
    const char *files[] = {"state.safetensors", "ema.safetensors", "run.json"};
    for (int i = 0; i < 3; i++)
        expect_same_file(test_pathf("%s/%s", ref, files[i]), test_pathf("%s/%s", dir, files[i]));
    char *snaps = names_ending(ref, ".safetensors"), *got = names_ending(dir, ".safetensors"), want[2048] = "";
    for (int s = SNAP_EVERY; s <= STEPS; s += SNAP_EVERY)
        snprintf(want + strlen(want), sizeof want - strlen(want), "ema-step%08d.safetensors ", s);
    strcat(want, "ema.safetensors state.safetensors");
    ck_assert_msg(!strcmp(snaps, want), "the uninterrupted run wrote %s, want %s", snaps, want);
    ck_assert_msg(!strcmp(snaps, got), "the killed run holds %s, the uninterrupted one %s", got, snaps);
    for (char *name = strtok(snaps, " "); name; name = strtok(NULL, " "))
        expect_same_file(test_pathf("%s/%s", ref, name), test_pathf("%s/%s", dir, name));
    free(snaps);
    free(got);
    char *tmp = names_ending(dir, ".tmp");
    ck_assert_msg(tmp[0] == '\0', "the finished run left %s", tmp);
    free(tmp);

    long steps[STEPS];
    for (int i = 0; i < STEPS; i++) steps[i] = i + 1;
    expect_log_steps(ref, steps, STEPS);
    expect_log_steps(dir, steps, STEPS);
    struct log a = read_log(ref), b = read_log(dir);
    for (int i = 1; i <= STEPS; i++) {
        const char *w = fields_of(a.line[i], 7), *h = fields_of(b.line[i], 7);
        ck_assert_msg(!strcmp(w, h), "log.csv row %d: '%s' after the kills, '%s' uninterrupted", i, h, w);
    }
    free(a.text);
    free(b.text);
}

START_TEST(killed_runs_end_as_the_uninterrupted_one) {
    char ref[TEST_PATH_MAX], dir[TEST_PATH_MAX]; // kept: test_path's buffers rotate
    snprintf(ref, sizeof ref, "%s", test_subdir("uninterrupted"));
    snprintf(dir, sizeof dir, "%s", test_subdir("killed"));
    double t0 = now_seconds();
    int st = wait_run(start_run(ref));
    const double t_run = now_seconds() - t0;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the uninterrupted run failed (status %d)",
                  test_exit_status(st));

    // Round k picks, from seeded draws, a step a bit past where the run stands (1 to 8 steps on) and a
    // delay of up to 1.5 steps' time after that step's log row (the row comes just before its save): the
    // kills fall all over the run, and many inside a save. Every fifth round instead kills at a random
    // moment of the process's start (the new run's creation, a resume's loading and the log's rewrite).
    // A run that reaches its target before its kill (this process was not scheduled in time) is checked
    // against the uninterrupted one, and the next round starts a new run.
    const double step_time = t_run / STEPS;
    int killed = 0, in_save = 0, rounds = 0, finished = 0;
    char story[4096] = "";
    for (; killed < KILLS && rounds < 2 * KILLS; rounds++) {
        const double u = draw(2 * rounds), v = draw(2 * rounds + 1);
        const bool at_start = rounds % 5 == 0;
        const long from = state_step(dir), logged = last_logged_step(dir);
        const long at = (from > logged ? from : logged) + 1 + (long)(8 * u);
        const pid_t pid = start_run(dir);
        bool ended = false;
        const struct timespec poll = {0, 500 * 1000};
        while (!at_start && !ended && last_logged_step(dir) < at) {
            if (waitpid(pid, &st, WNOHANG) == pid) ended = true;
            else nanosleep(&poll, NULL);
        }
        if (!ended) {
            const double delay = v * (at_start ? 4 : 1.5) * step_time;
            const struct timespec ts = {(time_t)delay, (long)((delay - (time_t)delay) * 1e9)};
            nanosleep(&ts, NULL);
            kill(pid, SIGKILL);
            st = wait_run(pid);
        }
        char *tmp = names_ending(dir, ".tmp");
        const bool was_killed = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
        snprintf(story + strlen(story), sizeof story - strlen(story), " %s%s %ld->%ld%s%s",
                 was_killed ? "kill" : "done", at_start ? " at start" : "", from, state_step(dir),
                 tmp[0] ? " left " : "", tmp);
        if (was_killed) {
            killed++;
            in_save += tmp[0] != '\0';
            // a state at step s means every file of step s is there: each snapshot up to s exists now,
            // not only after the resume rewrites it
            const long at_state = state_step(dir);
            for (long s = SNAP_EVERY; s <= at_state; s += SNAP_EVERY)
                ck_assert_msg(test_exists(test_pathf("%s/ema-step%08ld.safetensors", dir, s)), "round %d: the "
                              "state is at step %ld, but the snapshot of step %ld is missing:%s", rounds + 1,
                              at_state, s, story);
        } else {
            ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d (after %d kills) failed with status "
                          "%d:%s", rounds + 1, killed, test_exit_status(st), story);
            expect_same_run(ref, dir);
            finished++;
            test_remove_tree(dir);
        }
        free(tmp);
    }
    printf("crash: %d of %d rounds killed a run, %d of the kills left a .tmp file, %d runs finished first "
           "(seed %d; state steps:%s)\n", killed, rounds, in_save, finished, KILL_SEED, story);
    // not vacuous: the kills cut runs short (the children died of the signal)
    ck_assert_msg(killed >= KILLS / 2, "only %d of %d rounds killed a run:%s", killed, rounds, story);
    st = wait_run(start_run(dir));
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the last resume failed (status %d)",
                  test_exit_status(st));
    expect_same_run(ref, dir);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 2. What a run folder does about a kill on its own

// A new run's log.csv holds its header before the first step, so a kill before the first progress
// line leaves a log that a resume keeps.
START_TEST(new_run_log_starts_with_its_header) {
    char dir[TEST_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", test_path("new"));
    struct msd_model m;
    struct msd_train_opts o;
    const struct msd_config c = micro();
    msd_train_defaults(&o);
    ck_assert_msg(msd_model_create(&m, &c, &msd_backend_ref) == 0, "%s", msd_last_error());
    const struct msd_run_opts r = run_opts(dir, STEPS);
    ck_assert_msg(msd_run_create(&m, &o, &r) == 0, "%s", msd_last_error());
    size_t n;
    char *log = test_read_file(test_pathf("%s/log.csv", dir), &n);
    ck_assert_msg(n == strlen(HEADER) && !memcmp(log, HEADER, n), "a new run's log.csv is '%s', want the header "
                  "'%s'", log, HEADER);
    free(log);
    // an old log in the folder of a run that never saved is replaced by the header
    test_write_file(test_pathf("%s/log.csv", dir), "7,14,1.5,1.5,,0.001,3,9,1\n", 26);
    ck_assert_msg(msd_run_create(&m, &o, &r) == 0, "%s", msd_last_error());
    log = test_read_file(test_pathf("%s/log.csv", dir), &n);
    ck_assert_msg(n == strlen(HEADER) && !memcmp(log, HEADER, n), "a second new run's log.csv is '%s'", log);
    free(log);
    msd_model_free(&m);
}
END_TEST

// A resume rewrites log.csv as the header and the whole rows up to the state's step: a log that an
// older version, killed before its first row, left empty; rows without a header; a row past the
// state; a row cut short; repeated rows; a first line that is neither header nor row.
START_TEST(resume_repairs_the_log) {
    char dir[TEST_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", test_path("repair"));
    ck_assert_msg(train_run(dir, 3) == 0, "%s", msd_last_error());
    const long first[] = {1, 2, 3};
    expect_log_steps(dir, first, 3);
    struct log g = read_log(dir);
    char *rows = strdup(g.line[1]); // rows 1..3 without the header
    const size_t rows_len = strlen(rows);
    free(g.text);
    size_t state_len;
    char *state = test_read_file(test_pathf("%s/state.safetensors", dir), &state_len);
    const char *row2 = strchr(rows, '\n') + 1;
    char past[1024], again[1024], garbage[1024];
    snprintf(past, sizeof past, "%s%s4,8,1.5,1.5,,0.001,3,9,1\n5,10,1.2", HEADER, rows); // the last one cut short
    snprintf(again, sizeof again, "%s%s%s", HEADER, rows, row2);                        // 2 and 3 twice
    snprintf(garbage, sizeof garbage, "garbage\n%s", rows);
    const struct {
        const char *log;
        long steps[5];
        int n;
    } cases[] = {
        {"", {4}, 1}, {rows, {1, 2, 3, 4}, 4}, {past, {1, 2, 3, 4}, 4}, {again, {1, 2, 3, 4}, 4},
        {garbage, {1, 2, 3, 4}, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_write_file(test_pathf("%s/log.csv", dir), cases[i].log, strlen(cases[i].log));
        test_write_file(test_pathf("%s/state.safetensors", dir), state, state_len); // back at step 3
        ck_assert_msg(train_run(dir, 4) == 0, "case %zu: %s", i, msd_last_error());
        expect_log_steps(dir, cases[i].steps, cases[i].n);
        // the kept rows are the old ones, byte for byte
        g = read_log(dir);
        if (cases[i].n == 4) ck_assert_msg(!strncmp(g.line[1], rows, rows_len), "case %zu: rows 1-3 changed", i);
        free(g.text);
    }
    free(rows);
    free(state);
}
END_TEST

// A resume removes the temporary files of the run's files a killed save left (they are never read),
// and leaves any other file alone.
START_TEST(resume_removes_stale_tmp_files) {
    char dir[TEST_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", test_path("stale"));
    ck_assert_msg(train_run(dir, 1) == 0, "%s", msd_last_error());
    const char *stale[] = {"state.safetensors.tmp", "ema.safetensors.tmp", "run.json.tmp", "log.csv.tmp",
                           "state-failed.safetensors.tmp", "ema-step00000005.safetensors.tmp"};
    const char *kept[] = {"notes.tmp", "ema-step.tmp", "state.safetensors.tmp.tmp", "x.safetensors.tmp", "tmp"};
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++)
        test_write_file(test_pathf("%s/%s", dir, stale[i]), "half a file", 11);
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        test_write_file(test_pathf("%s/%s", dir, kept[i]), "not the run's", 13);
    ck_assert_msg(train_run(dir, 2) == 0, "%s", msd_last_error());
    ck_assert_msg(state_step(dir) == 2, "the resumed run is at step %ld, want 2", state_step(dir));
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++)
        ck_assert_msg(!test_exists(test_pathf("%s/%s", dir, stale[i])), "the resume left %s", stale[i]);
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        ck_assert_msg(test_exists(test_pathf("%s/%s", dir, kept[i])), "the resume removed %s", kept[i]);
}
END_TEST

int main(void) {
    test_tmpdir_make("crash");
    const TTest *tests[] = {
        killed_runs_end_as_the_uninterrupted_one, new_run_log_starts_with_its_header, resume_repairs_the_log,
        resume_removes_stale_tmp_files,
    };
    return run_tests("crash", 300, tests, TEST_COUNT(tests));
}
