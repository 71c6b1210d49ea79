/*
 * classify: label the flows of a capture file with Combo Packet, through the C ABI.
 *
 *   classify <engine.toml> <capture.pcap>
 *
 * Reads the capture with libpcap, hands every packet to one worker, and prints one line per
 * flow verdict: "<src>:<port> -> <dst>:<port> <proto> <label> <confidence> <packets>".
 * Build (see examples/c/Makefile or the README):
 *   cc -Iinclude examples/c/classify.c -Ltarget/release -lcombo_packet -lpcap \
 *      -Wl,-rpath,$PWD/target/release -o classify
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>

#include "combo_packet.h"

#define RECORDS_PER_POLL 64

static void print_error(const char *what) {
    char message[512];
    combo_last_error(message, sizeof message);
    fprintf(stderr, "classify: %s: %s\n", what, message);
}

/* The library's log records (model loaded, threads, warnings such as random weights) go to
 * stderr, as a host would route them into its own log. Called from any thread. */
static void log_to_stderr(void *user_data, ComboLogLevel level, const char *target,
                          const char *message) {
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    (void)user_data;
    (void)target;
    fprintf(stderr, "classify: [%s] %s\n", names[level <= COMBO_LOG_LEVEL_TRACE ? level : 0],
            message);
}

static void format_address(const ComboTuple *tuple, const uint8_t *address, char *out,
                           size_t size) {
    int family = tuple->ip_version == 4 ? AF_INET : AF_INET6;
    if (inet_ntop(family, address, out, (socklen_t)size) == NULL) {
        snprintf(out, size, "?");
    }
}

/* Prints the flow verdicts among the records ready now; returns how many flows. */
static size_t print_flows(ComboWorker *worker) {
    ComboRecord records[RECORDS_PER_POLL];
    size_t count = 0, flows = 0;
    do {
        if (combo_worker_poll(worker, records, RECORDS_PER_POLL, &count) != COMBO_STATUS_OK) {
            print_error("poll");
            return flows;
        }
        for (size_t i = 0; i < count; i++) {
            const ComboRecord *r = &records[i];
            if (r->kind != COMBO_RECORD_KIND_FLOW) {
                continue;
            }
            char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN];
            format_address(&r->tuple, r->tuple.src_addr, src, sizeof src);
            format_address(&r->tuple, r->tuple.dst_addr, dst, sizeof dst);
            printf("%s:%u -> %s:%u %s %s %.3f %" PRIu64 "\n", src, r->tuple.src_port, dst,
                   r->tuple.dst_port, r->tuple.protocol == 6 ? "TCP" : "UDP",
                   r->label ? r->label : "(none)", r->confidence, r->packets);
            flows++;
        }
    } while (count == RECORDS_PER_POLL);
    return flows;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <engine.toml> <capture.pcap>\n", argv[0]);
        return 2;
    }
    if (combo_abi_version() >> 16 != COMBO_ABI_VERSION_MAJOR) {
        fprintf(stderr, "classify: library ABI %u, header %u\n", combo_abi_version() >> 16,
                COMBO_ABI_VERSION_MAJOR);
        return 1;
    }

    combo_set_log_callback(log_to_stderr, NULL, COMBO_LOG_LEVEL_INFO);

    char pcap_error[PCAP_ERRBUF_SIZE];
    pcap_t *capture = pcap_open_offline_with_tstamp_precision(
        argv[2], PCAP_TSTAMP_PRECISION_NANO, pcap_error);
    if (capture == NULL) {
        fprintf(stderr, "classify: %s\n", pcap_error);
        return 1;
    }

    ComboEngine *engine = NULL;
    ComboWorker *worker = NULL;
    if (combo_engine_new_from_file(argv[1], &engine) != COMBO_STATUS_OK) {
        print_error("engine");
        pcap_close(capture);
        return 1;
    }
    if (combo_worker_new(engine, &worker) != COMBO_STATUS_OK) {
        print_error("worker");
        combo_engine_free(engine);
        pcap_close(capture);
        return 1;
    }

    /* Feed every packet; the packet number is the user tag. */
    uint32_t link_type = (uint32_t)pcap_datalink(capture);
    struct pcap_pkthdr *header;
    const u_char *data;
    uint64_t number = 0;
    size_t flows = 0;
    int status = 0;
    while (pcap_next_ex(capture, &header, &data) == 1) {
        uint64_t ts = (uint64_t)header->ts.tv_sec * 1000000000u + (uint64_t)header->ts.tv_usec;
        if (combo_worker_process(worker, link_type, ts, data, header->caplen, header->len,
                                 ++number, NULL) != COMBO_STATUS_OK) {
            print_error("process");
            status = 1;
            break;
        }
        flows += print_flows(worker);
    }

    /* End every flow so each reports its verdict, then report counters. */
    if (combo_worker_flush(worker, COMBO_FLUSH_END_FLOWS) != COMBO_STATUS_OK) {
        print_error("flush");
        status = 1;
    }
    flows += print_flows(worker);
    ComboStats stats;
    if (combo_worker_stats(worker, &stats) == COMBO_STATUS_OK) {
        fprintf(stderr,
                "classify: %" PRIu64 " packets, %" PRIu64 " accepted, %" PRIu64
                " contexts classified, %zu flows\n",
                stats.packets, stats.accepted, stats.contexts_classified, flows);
    }
    combo_worker_free(worker);
    combo_engine_free(engine);
    pcap_close(capture);
    return status;
}
