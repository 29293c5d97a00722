// run.c: the training loop of a run folder (run.h): progress, log, checkpoints, SIGINT and SIGTERM.
#include "run.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/io/atomic.h"
#include "common/io/checkpoint.h"
#include "common/core/error.h"
#include "common/core/util.h"

// The signal that asked the run to stop (SIGINT or SIGTERM), 0 while none has.
static volatile sig_atomic_t stop_signal = 0;

static void on_stop(int sig) { stop_signal = sig; }

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void path_in(char *buf, size_t size, const char *dir, const char *file) {
    int n = snprintf(buf, size, "%s/%s", dir, file);
    CHECK(n > 0 && (size_t)n < size, "path too long: %s/%s", dir, file);
}

const char *msd_run_model_path(const char *model, char *buf, size_t size) {
    struct stat sb;
    if (stat(model, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(buf, size, "%s/ema.safetensors", model);
    else snprintf(buf, size, "%s", model);
    return buf;
}

// Paths in the run folder are built in fixed buffers; a folder name that long is refused up front.
static int dir_ok(const char *dir) {
    if (strlen(dir) > 3000) return msd_set_error("run folder name is %zu characters long, expected at most 3000",
                                                 strlen(dir));
    return 0;
}

static int ensure_dir(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) return 0;
        return msd_set_error("run folder '%s' exists and is not a folder", dir);
    }
    if (mkdir(dir, 0777) < 0) return msd_set_error("cannot create run folder '%s': %s", dir, strerror(errno));
    return 0;
}

// Remove the temporary files a killed save left in the run folder: "<file>.tmp" of the files a run
// writes (run.json, log.csv, state.safetensors, state-failed.safetensors, ema.safetensors,
// ema-step*.safetensors); nothing reads them, and any other .tmp file is not the run's to remove.
static void remove_stale_tmp(const char *dir) {
    static const char *const files[] = {"run.json", "log.csv", "state.safetensors", "state-failed.safetensors",
                                        "ema.safetensors"};
    DIR *d = opendir(dir);
    if (!d) return; // the folder was just made or checked; a listing that fails leaves files, loses nothing
    char path[4200];
    for (struct dirent *e; (e = readdir(d));) {
        const size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".tmp")) continue;
        const size_t stem = n - 4;
        bool ours = stem > 20 && !strncmp(e->d_name, "ema-step", 8) &&
                    !strncmp(e->d_name + stem - 12, ".safetensors", 12);
        for (size_t i = 0; i < sizeof files / sizeof files[0] && !ours; i++)
            ours = stem == strlen(files[i]) && !strncmp(e->d_name, files[i], stem);
        if (!ours) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        remove(path);
    }
    closedir(d);
}

// log.csv's first line, with its newline.
static void log_header(const struct msd_model *m, char *buf, size_t size) {
    int n = snprintf(buf, size, "step,images,loss");
    for (int s = 0; s < m->cfg.n_stages; s++) n += snprintf(buf + n, size - (size_t)n, ",loss_stage%d", s);
    n += snprintf(buf + n, size - (size_t)n, ",lr,grad_norm,images_per_s,seconds\n");
    CHECK(n > 0 && (size_t)n < size, "log header of %d stages does not fit %zu bytes", m->cfg.n_stages, size);
}

// ---------------------------------------------------------------------------------------------------
// run.json

int msd_run_create(const struct msd_model *m, const struct msd_train_opts *o, const struct msd_run_opts *r) {
    if (dir_ok(r->dir) < 0 || ensure_dir(r->dir) < 0) return -1;
    char path[4096];
    path_in(path, sizeof path, r->dir, "state.safetensors");
    struct stat sb;
    if (stat(path, &sb) == 0)
        return msd_set_error("run folder '%s' already holds a run (state.safetensors): add --resume to continue "
                             "it, or choose another --out",
                             r->dir);
    char *config = msd_config_to_json(&m->cfg);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "config", cJSON_Parse(config));
    cJSON_AddStringToObject(j, "data", r->data);
    cJSON_AddNumberToObject(j, "steps", (double)r->steps);
    if (r->ckpt_every > 0) // 0 (saves at the end only) is recorded as no value, which reads back as 0
        cJSON_AddNumberToObject(j, "ckpt_every", (double)r->ckpt_every);
    cJSON_AddNumberToObject(j, "snapshot_every", (double)r->snapshot_every);
    cJSON_AddNumberToObject(j, "batch", o->batch);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    cJSON_AddStringToObject(j, "seed", seed);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    free(config);
    path_in(path, sizeof path, r->dir, "run.json");
    int rc = msd_write_file_atomic(path, text, strlen(text));
    free(text);
    // the log starts as its header, on disk before the first step (it replaces a log left without a
    // state, which belongs to no run)
    if (rc == 0) {
        char header[1024];
        log_header(m, header, sizeof header);
        path_in(path, sizeof path, r->dir, "log.csv");
        rc = msd_write_file_atomic(path, header, strlen(header));
    }
    return rc;
}

// DIR/run.json parsed, or NULL with a message.
static cJSON *read_run_json(const char *dir, char *path, size_t size) {
    if (dir_ok(dir) < 0) return NULL;
    path_in(path, size, dir, "run.json");
    FILE *f = fopen(path, "rb");
    if (!f) {
        msd_set_error("cannot open '%s': %s (is '%s' a run folder?)", path, strerror(errno), dir);
        return NULL;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const long nul = msd_json_nul_escape(buf);
    if (nul >= 0) {
        msd_set_error("'%s': \\u0000 at byte %ld, a NUL character that would cut its string short", path, nul);
        return NULL;
    }
    cJSON *j = cJSON_Parse(buf);
    // the numbers are checked where they are read (read_count)
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "data"))) {
        cJSON_Delete(j);
        msd_set_error("'%s': expected a JSON object with \"data\" (string) and \"steps\" (number)", path);
        return NULL;
    }
    return j;
}

// The step count run.json holds under key, as *out: a whole number from lo to 10^9 (the range of
// msdiff train's flag), checked before the conversion since a double beyond long's range (1e300)
// would make the cast undefined. An absent key leaves *out alone when optional.
static int read_count(const cJSON *j, const char *path, const char *key, bool optional, long lo, const char *flag,
                      long *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!v && optional) return 0;
    if (!cJSON_IsNumber(v))
        return msd_set_error("'%s': \"%s\" is %s, expected a whole number of steps from %ld to "
                             "1000000000 (the range of msdiff train %s)", path, key, v ? "not a number" : "missing", lo,
                             flag);
    const double s = v->valuedouble;
    if (!(s >= lo && s <= 1e9 && s == floor(s)))
        return msd_set_error("'%s': \"%s\" is %.17g, expected a whole number of steps from %ld to 1000000000 "
                             "(the range of msdiff train %s)", path, key, s, lo, flag);
    *out = (long)s;
    return 0;
}

int msd_run_read(const char *dir, struct msd_run_record *rec) {
    char path[4096];
    cJSON *j = read_run_json(dir, path, sizeof path);
    if (!j) return -1;
    struct msd_run_record got = {0}; // the intervals stay 0 where an older run.json has none
    if (read_count(j, path, "steps", false, 1, "--steps", &got.steps) < 0 ||
        read_count(j, path, "ckpt_every", true, 1, "--ckpt-every", &got.ckpt_every) < 0 ||
        read_count(j, path, "snapshot_every", true, 0, "--snapshot-every", &got.snapshot_every) < 0) {
        cJSON_Delete(j);
        return -1;
    }
    got.data = xstrdup(cJSON_GetObjectItemCaseSensitive(j, "data")->valuestring);
    *rec = got;
    cJSON_Delete(j);
    return 0;
}

// Set key of j to the number x, adding it when j has none (a run.json of an older version).
static void set_number(cJSON *j, const char *key, long x) {
    if (cJSON_GetObjectItemCaseSensitive(j, key)) cJSON_ReplaceItemInObjectCaseSensitive(j, key, cJSON_CreateNumber(x));
    else cJSON_AddNumberToObject(j, key, (double)x);
}

int msd_run_update(const char *dir, const struct msd_run_opts *r) {
    char path[4096];
    cJSON *j = read_run_json(dir, path, sizeof path);
    if (!j) return -1;
    set_number(j, "steps", r->steps);
    if (r->ckpt_every > 0) set_number(j, "ckpt_every", r->ckpt_every);
    else cJSON_DeleteItemFromObjectCaseSensitive(j, "ckpt_every");
    set_number(j, "snapshot_every", r->snapshot_every);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    int rc = msd_write_file_atomic(path, text, strlen(text));
    free(text);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Saving

static int save_all(struct msd_model *m, struct msd_train_state *st, const struct msd_train_opts *o,
                    const struct msd_run_opts *r, bool snapshot) {
    char path[4096];
    // nothing is written unless all of it is finite: the EMA checkpoint goes first, the moments only
    // into the state file last
    path_in(path, sizeof path, r->dir, "state.safetensors");
    if (msd_train_check_finite(m, st, path) < 0) return -1;
    // the EMA as a sampling checkpoint: swap it in as the weights for the save
    float *w = m->w;
    m->w = st->ema;
    char kimg[32];
    snprintf(kimg, sizeof kimg, "%.17g", st->images / 1000.0);
    const char *keys[] = {"kimg"}, *values[] = {kimg};
    path_in(path, sizeof path, r->dir, "ema.safetensors");
    int rc = msd_checkpoint_save(m, path, keys, values, 1);
    if (rc == 0 && snapshot) {
        char name[64]; // by step: kimg rounded to whole numbers could repeat
        snprintf(name, sizeof name, "ema-step%08ld.safetensors", st->step);
        path_in(path, sizeof path, r->dir, name);
        rc = msd_checkpoint_save(m, path, keys, values, 1);
    }
    m->w = w;
    // the state last: a kill before it leaves the state of the previous save, and the resumed run
    // writes this step's EMA files again
    path_in(path, sizeof path, r->dir, "state.safetensors");
    if (rc == 0) rc = msd_train_save(path, m, st, o);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Progress

struct progress {
    double t_start, t_last;
    long step_start, steps_since;
    double images_since;
    double loss_sum, stage_sum[MSD_MAX_STAGES], grad_sum, lr;
    long stage_count[MSD_MAX_STAGES];
    FILE *csv;
};

static void fmt_duration(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

static void report(struct progress *p, const struct msd_model *m, const struct msd_train_state *st,
                   const struct msd_run_opts *r) {
    if (p->steps_since == 0) return;
    const double t = now_seconds(), dt = t - p->t_last;
    const double ips = p->images_since / fmax(dt, 1e-9);
    const double rate = (st->step - p->step_start) / fmax(t - p->t_start, 1e-9);
    char eta[32], stages[256] = "";
    fmt_duration((r->steps - st->step) / rate, eta, sizeof eta);
    fprintf(p->csv, "%ld,%.0f,%.6g", st->step, st->images, p->loss_sum / p->steps_since);
    for (int s = 0; s < m->cfg.n_stages; s++) {
        if (p->stage_count[s]) {
            fprintf(p->csv, ",%.6g", p->stage_sum[s] / p->stage_count[s]);
            snprintf(stages + strlen(stages), sizeof stages - strlen(stages), "%ss%d %.4f",
                     stages[0] ? " " : " (", s, p->stage_sum[s] / p->stage_count[s]);
        } else {
            fprintf(p->csv, ",");
        }
    }
    if (stages[0]) strcat(stages, ")");
    fprintf(p->csv, ",%.6g,%.6g,%.4g,%.3f\n", p->lr, p->grad_sum / p->steps_since, ips, t - p->t_start);
    fflush(p->csv);
    if (!r->quiet) {
        printf("step %ld/%ld  images %.0f  loss %.4f%s  %.1f img/s  ETA %s\n", st->step, r->steps, st->images,
               p->loss_sum / p->steps_since, stages, ips, eta);
        fflush(stdout);
    }
    p->t_last = t;
    p->steps_since = 0;
    p->images_since = p->loss_sum = p->grad_sum = 0;
    memset(p->stage_sum, 0, sizeof p->stage_sum);
    memset(p->stage_count, 0, sizeof p->stage_count);
}

// Whether line (ending in '\n') is a row of the log: a step count from 1, then a comma. *step gets it.
static bool log_row(const char *line, long *step) {
    if (line[0] < '1' || line[0] > '9') return false;
    char *end;
    errno = 0;
    *step = strtol(line, &end, 10);
    return errno == 0 && *end == ',' && line[strlen(line) - 1] == '\n';
}

// Rewrite log.csv as its header and its rows up to saved_step, then open it for appending. Rows past
// the step the state was saved at go: a hard kill between a row and the next checkpoint leaves such
// rows, which the resumed run writes again. Whatever is not a whole row in step order goes too: a
// line a full disk cut short, and a first line that is not the header (a log of an older version that
// a kill left empty, then resumed without one), so every log starts with its header. The rewrite is
// atomic and durable, so a kill leaves the old log or the new one.
static FILE *open_log(const struct msd_model *m, const struct msd_run_opts *r, long saved_step) {
    char path[4096], header[1024];
    path_in(path, sizeof path, r->dir, "log.csv");
    log_header(m, header, sizeof header);
    FILE *old = fopen(path, "r");
    struct stat sb;
    // the kept rows are at most the old file
    size_t len = strlen(header), cap = len + (old && fstat(fileno(old), &sb) == 0 ? (size_t)sb.st_size : 0);
    char *text = xmalloc(cap + 1);
    memcpy(text, header, len);
    if (old) {
        char *line = NULL;
        size_t line_cap = 0;
        long last = 0, step;
        for (ssize_t n; (n = getline(&line, &line_cap, old)) > 0;) {
            if (!log_row(line, &step) || step <= last || step > saved_step) continue;
            last = step;
            if (len + (size_t)n > cap) break; // a file that grew while it was read: keep what fits
            memcpy(text + len, line, (size_t)n);
            len += (size_t)n;
        }
        free(line);
        fclose(old);
    }
    const int rc = msd_write_file_atomic(path, text, len);
    free(text);
    if (rc < 0) return NULL;
    FILE *f = fopen(path, "a");
    if (!f) msd_set_error("cannot open the log '%s': %s", path, strerror(errno));
    return f;
}

// ---------------------------------------------------------------------------------------------------
// The loop

int msd_run_train(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *data,
                  const struct msd_train_opts *o, const struct msd_run_opts *r) {
    if (dir_ok(r->dir) < 0 || ensure_dir(r->dir) < 0) return -1;
    if (msd_model_plan(m, o->batch, true) < 0) return -1;
    remove_stale_tmp(r->dir);
    struct progress p = {0};
    p.csv = open_log(m, r, st->step);
    if (!p.csv) return -1;
    p.t_start = p.t_last = now_seconds();
    p.step_start = st->step;
    stop_signal = 0;
    // SA_RESTART: a signal during a save must not fail one of its calls with EINTR
    struct sigaction sa = {.sa_handler = on_stop, .sa_flags = SA_RESTART}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    int rc = 0;
    long saved = -1; // the step of the last save
    while (st->step < r->steps && !stop_signal) {
        struct msd_step_info info;
        if (msd_train_step(m, st, data, o, &info) < 0) {
            // the weights are those from before the failing step: save them for a look or a resume
            char why[1024];
            snprintf(why, sizeof why, "%s", msd_last_error());
            // the last periodic checkpoint stays as it was; this state goes beside it for a look
            char path[4096], last[4096];
            path_in(path, sizeof path, r->dir, "state-failed.safetensors");
            path_in(last, sizeof last, r->dir, "state.safetensors");
            struct stat sb;
            const bool have_last = stat(last, &sb) == 0; // none before the first save of a new run
            if (msd_train_save(path, m, st, o) == 0)
                msd_set_error("%s; the state before that step is in '%s' (%s)", why, path, have_last
                              ? "state.safetensors is the last checkpoint" : "no checkpoint was saved before it");
            else
                msd_set_error("%s; could not save the state either: %s", why, msd_last_error());
            rc = -1;
            break;
        }
        p.steps_since++;
        p.images_since += o->batch;
        p.loss_sum += info.loss;
        p.stage_sum[info.stage] += info.loss;
        p.stage_count[info.stage]++;
        p.grad_sum += info.grad_norm;
        p.lr = info.lr;
        const bool last = st->step == r->steps || stop_signal;
        if (last || now_seconds() - p.t_last >= r->log_seconds) report(&p, m, st, r);
        const bool snap = r->snapshot_every > 0 && st->step % r->snapshot_every == 0;
        if (last || snap || (r->ckpt_every > 0 && st->step % r->ckpt_every == 0)) {
            if (save_all(m, st, o, r, snap) < 0) {
                rc = -1;
                break;
            }
            saved = st->step;
        }
    }
    if (rc == 0 && saved != st->step) { // a signal between the last step's save check and the loop's
        report(&p, m, st, r);
        rc = save_all(m, st, o, r, false);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    fclose(p.csv);
    if (rc == 0 && st->step < r->steps) rc = stop_signal; // saved: the caller says so and how to go on
    return rc;
}
