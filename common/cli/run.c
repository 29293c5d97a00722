// run.c: the training loop of a run folder (run.h): progress, log, checkpoints, SIGINT.
#include "run.h"

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

#include "common/io/checkpoint.h"
#include "common/core/error.h"
#include "common/core/util.h"

static volatile sig_atomic_t stop_requested = 0;

static void on_sigint(int sig) {
    (void)sig;
    stop_requested = 1;
}

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

// Write text to path atomically (temp file, fsync, rename), as checkpoints are.
static int write_text_atomic(const char *path, const char *text) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return msd_set_error("cannot write '%s': %s", tmp, strerror(errno));
    int ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) < 0) {
        remove(tmp);
        return msd_set_error("cannot write '%s': %s", path, strerror(errno));
    }
    return 0;
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
    path_in(path, sizeof path, r->dir, "log.csv"); // a log left without a state belongs to no run
    remove(path);
    char *config = msd_config_to_json(&m->cfg);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddItemToObject(j, "config", cJSON_Parse(config));
    cJSON_AddStringToObject(j, "data", r->data);
    cJSON_AddNumberToObject(j, "steps", (double)r->steps);
    cJSON_AddNumberToObject(j, "batch", o->batch);
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    cJSON_AddStringToObject(j, "seed", seed);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    free(config);
    path_in(path, sizeof path, r->dir, "run.json");
    int rc = write_text_atomic(path, text);
    free(text);
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
    cJSON *j = cJSON_Parse(buf);
    cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "data"), *s = cJSON_GetObjectItemCaseSensitive(j, "steps");
    if (!cJSON_IsString(d) || !cJSON_IsNumber(s)) {
        cJSON_Delete(j);
        msd_set_error("'%s': expected a JSON object with \"data\" (string) and \"steps\" (number)", path);
        return NULL;
    }
    return j;
}

int msd_run_read(const char *dir, char **data, long *steps) {
    char path[4096];
    cJSON *j = read_run_json(dir, path, sizeof path);
    if (!j) return -1;
    // checked before the conversion: a double beyond long's range (1e300) would make the cast undefined
    const double s = cJSON_GetObjectItemCaseSensitive(j, "steps")->valuedouble;
    if (!(s >= 1 && s <= 1e9 && s == floor(s))) {
        cJSON_Delete(j);
        return msd_set_error("'%s': \"steps\" is %.17g, expected a whole number of steps from 1 to 1000000000 "
                             "(the range of msdiff train --steps)", path, s);
    }
    *data = xstrdup(cJSON_GetObjectItemCaseSensitive(j, "data")->valuestring);
    *steps = (long)s;
    cJSON_Delete(j);
    return 0;
}

int msd_run_set_steps(const char *dir, long steps) {
    char path[4096];
    cJSON *j = read_run_json(dir, path, sizeof path);
    if (!j) return -1;
    cJSON_SetNumberValue(cJSON_GetObjectItemCaseSensitive(j, "steps"), (double)steps);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    int rc = write_text_atomic(path, text);
    free(text);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Saving

static int save_all(struct msd_model *m, struct msd_train_state *st, const struct msd_train_opts *o,
                    const struct msd_run_opts *r, bool snapshot) {
    char path[4096];
    path_in(path, sizeof path, r->dir, "state.safetensors");
    if (msd_train_save(path, m, st, o) < 0) return -1;
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

// Open log.csv for appending: a new log gets its header; a resumed one first loses the rows past
// the step the state was saved at (a hard kill between a row and the next checkpoint leaves such
// rows, which the resumed run writes again).
static FILE *open_log(const struct msd_model *m, const struct msd_run_opts *r, long saved_step) {
    char path[4096], tmp[4200];
    path_in(path, sizeof path, r->dir, "log.csv");
    FILE *old = fopen(path, "r");
    if (old) {
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *keep = fopen(tmp, "w");
        if (!keep) {
            fclose(old);
            msd_set_error("cannot write '%s': %s", tmp, strerror(errno));
            return NULL;
        }
        char line[4096];
        for (int row = 0; fgets(line, sizeof line, old); row++)
            if (row == 0 || strtol(line, NULL, 10) <= saved_step) fputs(line, keep);
        fclose(old);
        if (fclose(keep) != 0 || rename(tmp, path) < 0) {
            remove(tmp);
            msd_set_error("cannot rewrite the log '%s': %s", path, strerror(errno));
            return NULL;
        }
    }
    FILE *f = fopen(path, "a");
    if (!f) {
        msd_set_error("cannot open the log '%s': %s", path, strerror(errno));
        return NULL;
    }
    if (!old) {
        fprintf(f, "step,images,loss");
        for (int s = 0; s < m->cfg.n_stages; s++) fprintf(f, ",loss_stage%d", s);
        fprintf(f, ",lr,grad_norm,images_per_s,seconds\n");
    }
    return f;
}

// ---------------------------------------------------------------------------------------------------
// The loop

int msd_run_train(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *data,
                  const struct msd_train_opts *o, const struct msd_run_opts *r) {
    if (dir_ok(r->dir) < 0 || ensure_dir(r->dir) < 0) return -1;
    if (msd_model_plan(m, o->batch, true) < 0) return -1;
    struct progress p = {0};
    p.csv = open_log(m, r, st->step);
    if (!p.csv) return -1;
    p.t_start = p.t_last = now_seconds();
    p.step_start = st->step;
    stop_requested = 0;
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    int rc = 0;
    long saved = -1; // the step of the last save
    while (st->step < r->steps && !stop_requested) {
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
        const bool last = st->step == r->steps || stop_requested;
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
    sigaction(SIGINT, &old, NULL);
    if (rc == 0 && stop_requested && !r->quiet)
        printf("interrupted at step %ld: state saved in '%s'; continue with --resume\n", st->step, r->dir);
    fclose(p.csv);
    return rc;
}
