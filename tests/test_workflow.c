// test_workflow.c: msdiff train and msdiff sample from the outside, end to end. It runs the built
// ./msdiff (tests run from the repository root; make builds ./msdiff first) on a few PNG files it
// writes itself, and checks what the commands promise: sampling is a pure function of the seed
// (whatever the batch), a run folder holds what run.h says and samples, a resumed run ends bit for
// bit where an uninterrupted one does, SIGINT and SIGTERM stop cleanly (exit status 130, 143) with a
// state that resumes, a SIGKILL leaves a log with its header and run.json's save intervals, and bad
// command lines and bad data fail with one line that names the problem.
//
// Every run is tiny (mini or mini-ms, batch 2, 1-3 steps; euler with 2 steps): the ref backend is
// slow, and what is checked here is the plumbing, not the quality of the images.
#include <dirent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "common/cli/run.h"
#include "common/core/error.h"
#include "common/io/png.h"
#include "common/io/safetensors.h"
#include "testutil.h"

#define RES 28     // mini and mini-ms: 28x28x1
#define N_PNG 6    // images in the test data set
#define DATA_SEED 101

// ---------------------------------------------------------------------------------------------------
// The data sets in the temporary directory. The program runs through MSDIFF (testutil.h).

// A folder of n gray res x res PNGs (img000.png, ...) with seeded pixels. 0, or -1 with a message.
static int write_png_folder(const char *dir, int n, int res, uint64_t seed) {
    if (mkdir(dir, 0777) < 0) return msd_set_error("cannot create %s", dir);
    float *img = malloc((size_t)res * res * sizeof *img);
    if (!img) return msd_set_error("out of memory");
    char path[512];
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        fill_uniform(img, (size_t)res * res, seed + (uint64_t)i, -1.0f, 1.0f);
        snprintf(path, sizeof path, "%s/img%03d.png", dir, i);
        rc = msd_png_write(path, img, 1, res, res);
    }
    free(img);
    return rc;
}

// The temporary directory with data28/ (what mini takes) and data16/ (a size mini does not take).
static void setup(void) {
    test_tmpdir_make("workflow");
    if (write_png_folder(test_path("data28"), N_PNG, RES, DATA_SEED) < 0 ||
        write_png_folder(test_path("data16"), 4, 16, DATA_SEED)) {
        fprintf(stderr, "test_workflow: cannot write the test data: %s\n", msd_last_error());
        exit(1);
    }
}

// ---------------------------------------------------------------------------------------------------
// Reading what the commands wrote

struct image {
    uint8_t *px;
    int C, H, W;
};

static struct image read_png(const char *path) {
    struct image im;
    ck_assert_msg(msd_png_read(path, &im.px, &im.C, &im.H, &im.W) == 0, "%s", msd_last_error());
    return im;
}

// The last line of a text file, as the step count in its first comma-separated field; *rows gets the
// number of lines after the header.
static long last_csv_step(const char *path, int *rows) {
    char *s = test_read_file(path, NULL);
    *rows = -1;
    const char *last = NULL;
    for (char *p = s; *p;) {
        char *nl = strchr(p, '\n');
        if (nl == p) { // an empty line is not a row
            p++;
            continue;
        }
        (*rows)++;
        last = p;
        if (!nl) break;
        p = nl + 1;
    }
    long step = -1;
    if (last && *rows >= 1) {
        char *end;
        step = strtol(last, &end, 10);
        if (end == last || *end != ',') step = -1;
    }
    free(s);
    return step;
}

// ---------------------------------------------------------------------------------------------------
// 1. sample: a pure function of the seed, whatever the batch

START_TEST(sample_deterministic_and_batch_independent) {
    const char *ck = test_path("ms.safetensors"), *A = test_path("A"), *B = test_path("B"), *C = test_path("C");
    const char *grid = test_path("G.png");
    MSDIFF_OK("init", "--preset", "mini-ms", "--seed", "3", "--out", ck);
    MSDIFF_OK("sample", "--model", ck, "--seeds", "0-3", "--outdir", A, "--sampler", "euler", "--steps", "2",
              "--batch", "4");
    MSDIFF_OK("sample", "--model", ck, "--seeds", "0-3", "--outdir", B, "--sampler", "euler", "--steps", "2",
              "--batch", "3", "--grid", grid, "--cols", "2");
    MSDIFF_OK("sample", "--model", ck, "--seeds", "0-3", "--outdir", C, "--sampler", "euler", "--steps", "2",
              "--batch", "4");

    // A holds exactly seed000000.png .. seed000003.png
    int listed = 0;
    DIR *d = opendir(A);
    ck_assert_msg(d != NULL, "sample did not create --outdir %s", A);
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') listed++;
    closedir(d);
    ck_assert_msg(listed == 4, "%s holds %d files, want the 4 seeds' PNGs", A, listed);

    struct image im[4];
    for (int s = 0; s < 4; s++) {
        char name[64];
        snprintf(name, sizeof name, "seed%06d.png", s);
        const char *pa = test_pathf("%s/%s", A, name), *pb = test_pathf("%s/%s", B, name);
        const char *pc = test_pathf("%s/%s", C, name);
        size_t na, nc;
        char *fa = test_read_file(pa, &na), *fc = test_read_file(pc, &nc);
        ck_assert_msg(na == nc && !memcmp(fa, fc, na), "seed %d: two runs with --batch 4 give different files", s);
        free(fa);
        free(fc);
        im[s] = read_png(pa);
        struct image b = read_png(pb);
        ck_assert_msg(im[s].C == 1 && im[s].H == RES && im[s].W == RES, "%s is %dx%dx%d, want 1x28x28", pa,
                      im[s].C, im[s].H, im[s].W);
        ck_assert_msg(b.C == 1 && b.H == RES && b.W == RES, "%s is %dx%dx%d, want 1x28x28", pb, b.C, b.H, b.W);
        size_t first = RES * RES;
        for (size_t i = 0; i < RES * RES && first == RES * RES; i++)
            if (im[s].px[i] != b.px[i]) first = i;
        ck_assert_msg(first == RES * RES, "seed %d: --batch 3 differs from --batch 4 at pixel %zu (%d vs %d)", s,
                      first, b.px[first], im[s].px[first]);
        free(b.px);
    }
    // different seeds give different images (the seed reaches the latent)
    for (int s = 1; s < 4; s++)
        ck_assert_msg(memcmp(im[0].px, im[s].px, RES * RES), "seeds 0 and %d give the same image", s);

    // the grid: 2 x 2 cells of 28 with 2 pixels of mid-gray between and around them, each cell the
    // image of its seed (written from the --batch 3 run)
    struct image g = read_png(grid);
    const int pad = 2, side = 2 * RES + 3 * pad;
    ck_assert_msg(g.C == 1 && g.W == side && g.H == side, "grid is %dx%dx%d, want 1x%dx%d", g.C, g.H, g.W, side,
                  side);
    for (int s = 0; s < 4; s++) {
        const int y0 = pad + (s / 2) * (RES + pad), x0 = pad + (s % 2) * (RES + pad);
        for (int y = 0; y < RES; y++)
            ck_assert_msg(!memcmp(g.px + (size_t)(y0 + y) * side + x0, im[s].px + (size_t)y * RES, RES),
                          "grid cell of seed %d, row %d differs from %s/seed%06d.png", s, y, A, s);
    }
    for (int x = 0; x < side; x++)
        ck_assert_msg(g.px[x] == 128 && g.px[(size_t)(RES + pad) * side + x] == 128,
                      "grid padding at column %d is not mid-gray (128): %d, %d", x, g.px[x],
                      g.px[(size_t)(RES + pad) * side + x]);
    free(g.px);
    for (int s = 0; s < 4; s++) free(im[s].px);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 2. train, then sample from the run folder

START_TEST(train_then_sample) {
    const char *run = test_path("run"), *data = test_path("data28"), *grid = test_path("g.png");
    MSDIFF_OK("train", "--preset", "mini", "--data", data, "--steps", "2", "--batch", "2", "--out", run,
              "--quiet");
    const char *files[] = {"run.json", "log.csv", "state.safetensors", "ema.safetensors"};
    for (int i = 0; i < 4; i++) {
        const char *p = test_pathf("%s/%s", run, files[i]);
        ck_assert_msg(test_exists(p), "train did not write %s", p);
    }
    const char *p = test_pathf("%s/log.csv", run);
    char *log = test_read_file(p, NULL);
    ck_assert_msg(!strncmp(log, "step,images,loss", 16), "log.csv lacks its header: %s", log);
    free(log);
    int rows;
    long step = last_csv_step(p, &rows);
    ck_assert_msg(rows >= 1 && step == 2, "log.csv: %d rows, last step %ld; want at least one row ending at 2",
                  rows, step);
    char *json = test_read_file(test_pathf("%s/run.json", run), NULL);
    ck_assert_msg(strstr(json, data), "run.json does not record the data spec %s: %s", data, json);
    free(json);
    ck_assert_msg(test_state_step(test_pathf("%s/state.safetensors", run)) == 2, "state.safetensors is not at step 2");

    MSDIFF_OK("sample", "--model", run, "--seeds", "0-1", "--grid", grid, "--sampler", "euler", "--steps", "2");
    struct image g = read_png(grid);
    ck_assert_msg(g.C == 1 && g.W == 2 * RES + 3 * 2 && g.H == RES + 2 * 2, "grid of 2 is %dx%dx%d", g.C, g.H,
                  g.W);
    free(g.px);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 3. resume: 1 + 2 steps end where 3 steps do, bit for bit

// The tensors and counters of two state files are identical.
static void expect_same_state(const char *a, const char *b) {
    struct msd_st_file fa, fb;
    ck_assert_msg(msd_st_read(&fa, a) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_st_read(&fb, b) == 0, "%s", msd_last_error());
    const char *names[] = {"weights", "adam_m", "adam_v", "ema"};
    for (int i = 0; i < 4; i++) {
        const struct msd_st_tensor *t = msd_st_find(&fa, names[i]);
        ck_assert_msg(t && t->ndim == 1 && t->shape[0] > 0, "%s: no 1-d tensor %s", a, names[i]);
        const size_t n = (size_t)t->shape[0];
        float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
        ck_assert_msg(x && y, "out of memory");
        ck_assert_msg(msd_st_get_f32(&fa, names[i], 1, t->shape, x) == 0, "%s", msd_last_error());
        ck_assert_msg(msd_st_get_f32(&fb, names[i], 1, t->shape, y) == 0, "%s", msd_last_error());
        size_t diff = 0, first = n;
        for (size_t k = 0; k < n; k++)
            if (memcmp(&x[k], &y[k], sizeof *x)) diff++, first = first == n ? k : first;
        ck_assert_msg(diff == 0, "%s: %zu of %zu floats differ between the resumed and the uninterrupted run; "
                      "first at %zu: %.9g vs %.9g", names[i], diff, n, first, first < n ? y[first] : 0.0,
                      first < n ? x[first] : 0.0);
        free(x);
        free(y);
    }
    const char *keys[] = {"step", "images", "adam_steps"};
    for (int i = 0; i < 3; i++) {
        const char *va = msd_st_meta(&fa, keys[i]), *vb = msd_st_meta(&fb, keys[i]);
        ck_assert_msg(va && vb && !strcmp(va, vb), "metadata %s: '%s' uninterrupted, '%s' resumed", keys[i],
                      va ? va : "(none)", vb ? vb : "(none)");
    }
    msd_st_free(&fa);
    msd_st_free(&fb);
}

START_TEST(resume_equals_uninterrupted) {
    const char *data = test_path("data28"), *r1 = test_path("R1"), *r2 = test_path("R2");
    // mini-ms with narrow decoders (cheaper than mini) and the uniform policy: with seed 1 the three
    // steps use three different stages, so the Adam step counts of the groups differ (3,1,1,1) and the
    // resume must restore each. --lr-rampup is given so that the learning rate ramps over these steps
    // (by default it is a tenth of the first run's images, which would differ between R1 and R2).
#define COMMON "train", "--preset", "mini-ms", "--decoders", "8,8,8", "--policy", "uniform", "--data", data, \
               "--batch", "2", "--seed", "1", "--lr-rampup", "8", "--quiet"
    MSDIFF_OK(COMMON, "--steps", "3", "--out", r1);
    MSDIFF_OK(COMMON, "--steps", "1", "--out", r2);
#undef COMMON
    const char *s1 = test_pathf("%s/state.safetensors", r1), *s2 = test_pathf("%s/state.safetensors", r2);
    ck_assert_msg(test_state_step(s2) == 1, "the first half did not stop at step 1");
    // the premise: R1's steps went to more than one decoder (else pick another --seed above)
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, s1) == 0, "%s", msd_last_error());
    const char *adam = msd_st_meta(&f, "adam_steps");
    long g[4] = {0};
    ck_assert_msg(adam && sscanf(adam, "%ld,%ld,%ld,%ld", &g[0], &g[1], &g[2], &g[3]) == 4, "%s: adam_steps '%s'",
                  s1, adam ? adam : "(none)");
    ck_assert_msg(g[0] == 3 && (g[1] > 0) + (g[2] > 0) + (g[3] > 0) >= 2, "%s: adam_steps '%s', want 3 shared "
                  "steps over at least two decoders", s1, adam);
    msd_st_free(&f);
    struct test_run r = MSDIFF("train", "--out", r2, "--resume", "--steps", "3", "--log-seconds", "1000");
    test_expect_ok(&r);
    ck_assert_msg(strstr(r.out, "resuming") && strstr(r.out, "at step 1 "), "resume does not say where it starts: "
                  "%s", r.out);
    test_run_free(&r);
    expect_same_state(s1, s2);
    int rows;
    long last = last_csv_step(test_pathf("%s/log.csv", r2), &rows);
    ck_assert_msg(last == 3 && rows == 2, "resumed log.csv: want a row for step 1 and one for step 3, got %d rows "
                  "ending at step %ld", rows, last);

    // what a resume refuses
    r = MSDIFF("train", "--out", r2, "--resume", "--batch", "4");
    TEST_EXPECT_FAIL(&r, 2, "--batch");
    test_run_free(&r);
    r = MSDIFF("train", "--out", r2, "--resume", "--preset", "mini");
    TEST_EXPECT_FAIL(&r, 2, "--preset");
    test_run_free(&r);
    r = MSDIFF("train", "--out", test_path("norun"), "--resume", "--steps", "3");
    TEST_EXPECT_FAIL(&r, 1, "run.json");
    test_run_free(&r);
    ck_assert_msg(!test_exists(test_path("norun")), "a failed resume created its --out folder");
    // a new run into a folder that holds one
    r = MSDIFF("train", "--preset", "mini", "--data", data, "--steps", "1", "--batch", "2", "--out", r1);
    TEST_EXPECT_FAIL(&r, -1, "--resume");
    test_run_free(&r);
    ck_assert_msg(test_state_step(s1) == 3, "a refused new run changed %s", s1);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 4. SIGINT and SIGTERM: stop after the current step, save, exit with 128 + the signal, resume from there

// Spawn argv (a training run with progress rows) and wait until its log.csv holds a row for a step of
// at least `step` (0: until state.safetensors exists); fails the test, killing the run, when it exits
// first or takes over 60 s.
static void wait_for_progress(pid_t pid, const char *run, long step, const char *err) {
    const char *log = test_pathf("%s/log.csv", run), *state = test_pathf("%s/state.safetensors", run);
    int st = 0;
    bool exited = false, there = false;
    const struct timespec tick = {0, 50 * 1000 * 1000};
    for (int i = 0; i < 60 * 20 && !there && !exited; i++) {
        nanosleep(&tick, NULL);
        if (waitpid(pid, &st, WNOHANG) == pid) {
            exited = true;
        } else if (step == 0) {
            there = test_exists(state);
        } else if (test_exists(log)) {
            int rows;
            there = last_csv_step(log, &rows) >= step;
        }
    }
    if (!there) { // do not leave a long run behind
        if (!exited) kill(pid, SIGKILL), waitpid(pid, &st, 0);
        char *e = test_read_file(err, NULL);
        ck_abort_msg("train %s before %s (status %d); stderr: %s", exited ? "exited" : "went on for 60 s",
                     step ? test_pathf("a log row for step %ld", step) : "its first save", test_exit_status(st), e);
    }
}

// A run of mini stopped by sig exits with status (128 + sig) after saving, says where it stopped and
// how to go on, and resumes from there.
static void stop_by_signal(int sig, const char *name, int status) {
    const char *data = test_path("data28"), *run = test_pathf("%s/R-%s", test_tmpdir(), name);
    const char *out = test_pathf("%s/%s-out.txt", test_tmpdir(), name);
    const char *err = test_pathf("%s/%s-err.txt", test_tmpdir(), name);
    const char *argv[] = {"./msdiff", "train", "--preset", "mini", "--data", data, "--steps", "1000", "--batch", "2",
                          "--out", run, "--log-seconds", "0.1", NULL};
    const char *log = test_pathf("%s/log.csv", run), *state = test_pathf("%s/state.safetensors", run);
    const char *ema = test_pathf("%s/ema.safetensors", run);
    pid_t pid = test_spawn(argv, out, err);
    wait_for_progress(pid, run, 1, err); // a data row in the log: the loop (and its handlers) is running
    ck_assert_msg(kill(pid, sig) == 0, "kill %s failed", name);
    int st;
    ck_assert_msg(waitpid(pid, &st, 0) == pid, "waitpid failed");
    char *o = test_read_file(out, NULL), *e = test_read_file(err, NULL);
    // exited with the status, not ended by the signal (which a shell would also report as 128 + it)
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == status, "train %s %d after %s, want an exit with %d; "
                  "stderr: %s", WIFEXITED(st) ? "exited with" : "was ended by signal", WIFEXITED(st) ?
                  WEXITSTATUS(st) : WTERMSIG(st), name, status, e);
    ck_assert_msg(!strstr(o, "done:"), "train says done after %s: %s", name, o);
    ck_assert_msg(test_exists(state) && test_exists(ema), "no state.safetensors or ema.safetensors after %s", name);
    const long step = test_state_step(state);
    ck_assert_msg(step >= 1 && step < 1000, "state after %s is at step %ld, want 1..999", name, step);
    char said[1024];
    snprintf(said, sizeof said, "msdiff train: interrupted at step %ld by %s: state saved in '%s'; continue with "
             "--resume\n", step, name, run);
    ck_assert_msg(!strcmp(e, said), "train does not say (alone on stderr) '%s': stderr '%s'", said, e);
    free(o);
    free(e);
    int rows;
    long logged = last_csv_step(log, &rows);
    ck_assert_msg(logged == step, "log.csv ends at step %ld, the state at %ld", logged, step);

    char target[32];
    snprintf(target, sizeof target, "%ld", step + 1);
    struct test_run r = MSDIFF("train", "--out", run, "--resume", "--steps", target);
    test_expect_ok(&r);
    char at[64];
    snprintf(at, sizeof at, "at step %ld", step);
    ck_assert_msg(strstr(r.out, "resuming") && strstr(r.out, at), "resume does not say '%s': %s", at, r.out);
    ck_assert_msg(strstr(r.out, "done:"), "a resume that reached its target does not say done: %s", r.out);
    test_run_free(&r);
    ck_assert_msg(test_state_step(state) == step + 1, "the resumed run did not end at step %ld", step + 1);
}

START_TEST(sigint_saves_and_resumes) { stop_by_signal(SIGINT, "SIGINT", 130); }
END_TEST

START_TEST(sigterm_saves_and_resumes) { stop_by_signal(SIGTERM, "SIGTERM", 143); }
END_TEST

// A run stopped before its first save has run.json and no state: --resume says so and how to go on
// (the command that created it), and that command then starts the run afresh. A run.json records no
// save interval that was not chosen.
START_TEST(resume_without_a_state) {
    const char *data = test_path("data28"), *run = test_path("R-nostate");
    const char *argv[] = {"./msdiff", "train", "--preset", "mini", "--data", data, "--steps", "1", "--batch", "2",
                          "--out", run, "--quiet", NULL};
    test_run_ok(argv);
    // no --ckpt-every: nothing recorded, so that a resume to another target gets that target's default
    struct msd_run_record rec;
    ck_assert_msg(msd_run_read(run, &rec) == 0, "%s", msd_last_error());
    ck_assert_msg(rec.ckpt_every == 0, "run.json records the default ckpt_every %ld as if chosen", rec.ckpt_every);
    free(rec.data);
    ck_assert(remove(test_pathf("%s/state.safetensors", run)) == 0);
    struct test_run r = MSDIFF("train", "--out", run, "--resume");
    TEST_EXPECT_FAIL(&r, 1, "has no state.safetensors yet", "without --resume");
    test_run_free(&r);
    test_run_ok(argv);
    ck_assert_msg(test_state_step(test_pathf("%s/state.safetensors", run)) == 1, "the run started again did not save");
}
END_TEST

// A run killed (SIGKILL) after its first save and before its first progress row keeps a log.csv that
// is its header, and the save intervals of run.json: a resume without --ckpt-every saves every step
// as the run was told to, not at its default of a tenth of the run.
START_TEST(kill_keeps_the_log_header_and_the_save_intervals) {
    const char *data = test_path("data28"), *run = test_path("R-kill"), *err = test_path("kill-err.txt");
    const char *out = test_path("kill-out.txt");
    const char *argv[] = {"./msdiff", "train", "--preset", "mini", "--data", data, "--steps", "100000", "--batch",
                          "2", "--out", run, "--ckpt-every", "1", "--log-seconds", "1000", NULL};
    const char *log = test_pathf("%s/log.csv", run), *state = test_pathf("%s/state.safetensors", run);
    pid_t pid = test_spawn(argv, out, err);
    wait_for_progress(pid, run, 0, err);
    int st;
    ck_assert(kill(pid, SIGKILL) == 0 && waitpid(pid, &st, 0) == pid);
    char *text = test_read_file(log, NULL);
    ck_assert_msg(!strcmp(text, "step,images,loss,loss_stage0,lr,grad_norm,images_per_s,seconds\n"),
                  "log.csv of a run killed before its first row is '%s', want its header", text);
    free(text);
    struct msd_run_record rec;
    ck_assert_msg(msd_run_read(run, &rec) == 0, "%s", msd_last_error());
    ck_assert_msg(rec.steps == 100000 && rec.ckpt_every == 1 && rec.snapshot_every == 0, "run.json records steps "
                  "%ld, ckpt_every %ld, snapshot_every %ld; want 100000, 1, 0", rec.steps, rec.ckpt_every,
                  rec.snapshot_every);
    free(rec.data);

    // the resume saves every step: once it logs step s0 + 2, the state is at least at s0 + 1
    const long s0 = test_state_step(state);
    const char *resume[] = {"./msdiff", "train", "--out", run, "--resume", "--log-seconds", "0.001", NULL};
    pid = test_spawn(resume, out, err);
    wait_for_progress(pid, run, s0 + 2, err);
    ck_assert(kill(pid, SIGKILL) == 0 && waitpid(pid, &st, 0) == pid);
    const long s1 = test_state_step(state);
    ck_assert_msg(s1 >= s0 + 1, "the resume logged step %ld but saved no step after %ld: run.json's ckpt_every 1 "
                  "was not used", s0 + 2, s0);
    text = test_read_file(log, NULL);
    ck_assert_msg(!strncmp(text, "step,images,loss,", 17), "the resumed log lacks its header: %s", text);
    free(text);

    // flags given again are used and recorded; the next resume keeps them
    char target[32];
    snprintf(target, sizeof target, "%ld", s1 + 1);
    struct test_run r = MSDIFF("train", "--out", run, "--resume", "--steps", target, "--ckpt-every", "7",
                               "--snapshot-every", "1", "--quiet");
    test_expect_ok(&r);
    test_run_free(&r);
    ck_assert_msg(msd_run_read(run, &rec) == 0, "%s", msd_last_error());
    ck_assert_msg(rec.steps == s1 + 1 && rec.ckpt_every == 7 && rec.snapshot_every == 1, "run.json records steps "
                  "%ld, ckpt_every %ld, snapshot_every %ld; want %ld, 7, 1", rec.steps, rec.ckpt_every,
                  rec.snapshot_every, s1 + 1);
    free(rec.data);
    snprintf(target, sizeof target, "%ld", s1 + 2);
    r = MSDIFF("train", "--out", run, "--resume", "--steps", target, "--quiet");
    test_expect_ok(&r);
    test_run_free(&r);
    for (long s = s1 + 1; s <= s1 + 2; s++) {
        const char *snap = test_pathf("%s/ema-step%08ld.safetensors", run, s);
        ck_assert_msg(test_exists(snap), "no snapshot %s: the recorded --snapshot-every 1 was not kept", snap);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 5. train: bad command lines and bad data

START_TEST(train_bad_input) {
    const char *data = test_path("data28"), *run = test_path("bad-run");
#define TRAIN "train", "--data", data, "--steps", "1", "--batch", "2", "--out", run
    struct test_run r = MSDIFF(TRAIN, "--preset", "nosuch");
    TEST_EXPECT_FAIL(&r, -1, "nosuch", "mini");
    test_run_free(&r);
    r = MSDIFF(TRAIN, "--preset", "mini", "--policy", "bogus");
    TEST_EXPECT_FAIL(&r, 2, "--policy", "bogus");
    test_run_free(&r);
    r = MSDIFF(TRAIN, "--preset", "mini", "--loss", "bogus");
    TEST_EXPECT_FAIL(&r, 2, "--loss", "bogus");
    test_run_free(&r);
    r = MSDIFF(TRAIN, "--preset", "mini", "--dropout", "1.5");
    TEST_EXPECT_FAIL(&r, 2, "--dropout");
    test_run_free(&r);
#undef TRAIN
    r = MSDIFF("train", "--preset", "mini", "--data", data, "--steps", "0", "--batch", "2", "--out", run);
    TEST_EXPECT_FAIL(&r, 2, "--steps");
    test_run_free(&r);
    r = MSDIFF("train", "--preset", "mini", "--data", data, "--batch", "2", "--out", run);
    TEST_EXPECT_FAIL(&r, 2, "--steps");
    test_run_free(&r);

    // data errors: a failure naming the folder (and both sizes), and no training state written
    const char *state = test_pathf("%s/state.safetensors", run);
    const char *missing = test_path("no-such-data");
    r = MSDIFF("train", "--preset", "mini", "--data", missing, "--steps", "1", "--batch", "2", "--out", run);
    TEST_EXPECT_FAIL(&r, -1, missing);
    test_run_free(&r);
    ck_assert_msg(!test_exists(state), "train with missing data wrote %s", state);
    const char *data16 = test_path("data16");
    r = MSDIFF("train", "--preset", "mini", "--data", data16, "--steps", "1", "--batch", "2", "--out", run);
    TEST_EXPECT_FAIL(&r, -1, "16x16", "28x28");
    test_run_free(&r);
    ck_assert_msg(!test_exists(state), "train with 16x16 data for mini wrote %s", state);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 6. sample: bad command lines and a missing model

START_TEST(sample_bad_input) {
    const char *ck = test_path("bad-model.safetensors"), *grid = test_path("bad.png");
    MSDIFF_OK("init", "--preset", "mini", "--out", ck);
    struct test_run r = MSDIFF("sample", "--model", ck, "--seeds", "5-2", "--grid", grid);
    TEST_EXPECT_FAIL(&r, 2, "--seeds", "5-2");
    test_run_free(&r);
    const char *bad_seeds[] = {"", "x", "1-", "1,,2", "-3", " 3", "2- 4", "2-x"};
    for (size_t i = 0; i < sizeof bad_seeds / sizeof bad_seeds[0]; i++) {
        r = MSDIFF("sample", "--model", ck, "--seeds", bad_seeds[i], "--grid", grid);
        TEST_EXPECT_FAIL(&r, 2, "--seeds");
        test_run_free(&r);
    }
    r = MSDIFF("sample", "--model", ck, "--seeds", "0-1");
    TEST_EXPECT_FAIL(&r, 2, "--grid", "--outdir");
    test_run_free(&r);
    r = MSDIFF("sample", "--model", ck, "--grid", grid, "--sampler", "bogus");
    TEST_EXPECT_FAIL(&r, 2, "--sampler", "bogus");
    test_run_free(&r);
    r = MSDIFF("sample", "--model", ck, "--grid", grid, "--steps", "0");
    TEST_EXPECT_FAIL(&r, 2, "--steps");
    test_run_free(&r);
    r = MSDIFF("sample", "--grid", grid);
    TEST_EXPECT_FAIL(&r, 2, "--model");
    test_run_free(&r);
    const char *absent = test_path("absent.safetensors");
    r = MSDIFF("sample", "--model", absent, "--grid", grid, "--sampler", "euler", "--steps", "2");
    TEST_EXPECT_FAIL(&r, 1, absent);
    test_run_free(&r);
    // a folder without ema.safetensors: the message names the file it looked for
    r = MSDIFF("sample", "--model", test_path("data28"), "--grid", grid, "--sampler", "euler", "--steps", "2");
    TEST_EXPECT_FAIL(&r, 1, "ema.safetensors");
    test_run_free(&r);
    ck_assert_msg(!test_exists(grid), "a failed sample wrote %s", grid);
}
END_TEST

// run.json's step target and save intervals are read as whole numbers in their flags' ranges before
// they are converted: a value beyond a long (1e300, or an integer too long for one), a fraction, a
// value out of range or not a number is refused, naming the field. A run.json of an older version
// without the intervals reads as 0 for both (the defaults apply).
START_TEST(run_json_numbers_are_checked) {
    char dir[TEST_PATH_MAX]; // kept: test_pathf's buffers rotate
    snprintf(dir, sizeof dir, "%s", test_subdir("runjson"));
    const struct { const char *field, *range; long lo; } fields[] = {
        {"steps", "from 1 to 1000000000", 1}, {"ckpt_every", "from 1 to 1000000000", 1},
        {"snapshot_every", "from 0 to 1000000000", 0}};
    const char *bad[] = {"1e300", "44444444444444444441", "400.5", "-3", "1000000001", "\"7\"", "null", "-1e-300"};
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0] + (fields[f].lo == 1); i++) {
            const char *value = i < sizeof bad / sizeof bad[0] ? bad[i] : "0"; // 0 is out of range from 1
            const char *text = f == 0 ? test_pathf("{\"data\": \"fmnist\", \"steps\": %s}", value)
                                      : test_pathf("{\"data\": \"fmnist\", \"steps\": 10, \"%s\": %s}",
                                                   fields[f].field, value);
            test_write_file(test_pathf("%s/run.json", dir), text, strlen(text));
            struct msd_run_record rec = {0};
            ck_assert_msg(msd_run_read(dir, &rec) == -1, "%s %s: read as steps %ld, ckpt_every %ld, "
                          "snapshot_every %ld", fields[f].field, value, rec.steps, rec.ckpt_every,
                          rec.snapshot_every);
            const char *msg = msd_last_error();
            ck_assert_msg(strstr(msg, test_pathf("\"%s\"", fields[f].field)) && strstr(msg, fields[f].range) &&
                          strstr(msg, "run.json"), "%s %s: %s", fields[f].field, value, msg);
        }
    }
    const char *good = "{\"data\": \"fmnist\", \"steps\": 1000000000, \"ckpt_every\": 1000000000, "
                       "\"snapshot_every\": 0}";
    test_write_file(test_pathf("%s/run.json", dir), good, strlen(good));
    struct msd_run_record rec;
    ck_assert_msg(msd_run_read(dir, &rec) == 0, "%s", msd_last_error());
    ck_assert(rec.steps == 1000000000 && rec.ckpt_every == 1000000000 && rec.snapshot_every == 0 &&
              !strcmp(rec.data, "fmnist"));
    free(rec.data);
    // cJSON would read the data spec "fmnist\u0000:x" as "fmnist"
    const char *nul = "{\"data\": \"fmnist\\u0000:x\", \"steps\": 400}";
    test_write_file(test_pathf("%s/run.json", dir), nul, strlen(nul));
    ck_assert_msg(msd_run_read(dir, &rec) == -1 && strstr(msd_last_error(), "\\u0000 at byte 16"), "%s",
                  msd_last_error());
    const char *old = "{\"data\": \"fmnist\", \"steps\": 400}";
    test_write_file(test_pathf("%s/run.json", dir), old, strlen(old));
    ck_assert_msg(msd_run_read(dir, &rec) == 0, "%s", msd_last_error());
    ck_assert_msg(rec.steps == 400 && rec.ckpt_every == 0 && rec.snapshot_every == 0, "a run.json without the "
                  "intervals: steps %ld, ckpt_every %ld, snapshot_every %ld", rec.steps, rec.ckpt_every,
                  rec.snapshot_every);
    free(rec.data);
}
END_TEST

int main(void) {
    setup(); // before the tests fork: they share the directory and its data
    const TTest *tests[] = {
        sample_deterministic_and_batch_independent, train_then_sample, resume_equals_uninterrupted,
        sigint_saves_and_resumes, sigterm_saves_and_resumes, kill_keeps_the_log_header_and_the_save_intervals,
        resume_without_a_state,
        train_bad_input, sample_bad_input, run_json_numbers_are_checked,
    };
    return run_tests("workflow", 600, tests, TEST_COUNT(tests));
}
