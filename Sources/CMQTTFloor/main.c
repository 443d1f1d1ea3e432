// The C floor for the MQTT round-trip benchmark: the same measurement as
// `pulsebridge-bench mqtt`, written directly on libmosquitto (its own threaded loop,
// callbacks and a condition variable), so the Swift wrapper's cost can be read off.
//
//   mqtt-floor PORT COUNT      → one JSON line: {"p50Us":…, "p99Us":…, "maxUs":…, "count":…}
//
// Each round: publish QoS 1 on the publisher, then wait until both the publisher saw the
// PUBACK and the subscriber received the message.
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int acked, received, subscribed, connected;

static void on_connect(struct mosquitto *m, void *u, int rc, int flags, const mosquitto_property *p) {
    (void)m; (void)u; (void)flags; (void)p;
    if (rc != 0) { fprintf(stderr, "connect refused: %d\n", rc); exit(1); }
    pthread_mutex_lock(&lock); connected++; pthread_cond_broadcast(&cond); pthread_mutex_unlock(&lock);
}
static void on_subscribe(struct mosquitto *m, void *u, int mid, int n, const int *q, const mosquitto_property *p) {
    (void)m; (void)u; (void)mid; (void)n; (void)q; (void)p;
    pthread_mutex_lock(&lock); subscribed = 1; pthread_cond_broadcast(&cond); pthread_mutex_unlock(&lock);
}
static void on_publish(struct mosquitto *m, void *u, int mid, int rc, const mosquitto_property *p) {
    (void)m; (void)u; (void)mid; (void)rc; (void)p;
    pthread_mutex_lock(&lock); acked++; pthread_cond_broadcast(&cond); pthread_mutex_unlock(&lock);
}
static void on_message(struct mosquitto *m, void *u, const struct mosquitto_message *msg, const mosquitto_property *p) {
    (void)m; (void)u; (void)p;
    // Copy out, as the Swift wrapper does, so both pay for the same work.
    char *topic = strdup(msg->topic);
    void *payload = malloc((size_t)msg->payloadlen + 1);
    memcpy(payload, msg->payload, (size_t)msg->payloadlen);
    free(topic); free(payload);
    pthread_mutex_lock(&lock); received++; pthread_cond_broadcast(&cond); pthread_mutex_unlock(&lock);
}

static struct mosquitto *client(const char *id, int port) {
    struct mosquitto *m = mosquitto_new(id, true, NULL);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(m, on_connect);
    mosquitto_subscribe_v5_callback_set(m, on_subscribe);
    mosquitto_publish_v5_callback_set(m, on_publish);
    mosquitto_message_v5_callback_set(m, on_message);
    if (mosquitto_connect_bind_v5(m, "127.0.0.1", port, 30, NULL, NULL) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "cannot connect to 127.0.0.1:%d\n", port); exit(1);
    }
    mosquitto_loop_start(m);
    return m;
}

static long long now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int compare(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: mqtt-floor PORT COUNT\n"); return 2; }
    int port = atoi(argv[1]), count = atoi(argv[2]), warmup = 500;
    mosquitto_lib_init();
    struct mosquitto *sub = client("floor-sub", port), *pub = client("floor-pub", port);
    pthread_mutex_lock(&lock);
    while (connected < 2) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    mosquitto_subscribe_v5(sub, NULL, "bench/floor", 1, 0, NULL);
    pthread_mutex_lock(&lock);
    while (!subscribed) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);

    const char payload[] = "{\"type\":\"payment.completed\",\"paymentId\":\"p-bench\",\"amount\":400}";
    long long *samples = malloc(sizeof(long long) * (size_t)count);
    for (int i = 0; i < warmup + count; i++) {
        pthread_mutex_lock(&lock);
        int want_ack = acked + 1, want_msg = received + 1;
        pthread_mutex_unlock(&lock);
        long long t0 = now_ns();
        mosquitto_publish_v5(pub, NULL, "bench/floor", (int)sizeof payload - 1, payload, 1, false, NULL);
        pthread_mutex_lock(&lock);
        while (acked < want_ack || received < want_msg) pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        if (i >= warmup) samples[i - warmup] = now_ns() - t0;
    }
    qsort(samples, (size_t)count, sizeof(long long), compare);
    printf("{\"count\":%d,\"p50Us\":%.1f,\"p99Us\":%.1f,\"maxUs\":%.1f}\n", count,
           samples[count / 2] / 1e3, samples[(int)(count * 0.99)] / 1e3, samples[count - 1] / 1e3);
    mosquitto_disconnect(sub); mosquitto_disconnect(pub);
    mosquitto_loop_stop(sub, false); mosquitto_loop_stop(pub, false);
    mosquitto_destroy(sub); mosquitto_destroy(pub);
    mosquitto_lib_cleanup();
    free(samples);
    return 0;
}
