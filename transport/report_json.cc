#include "transport/report_json.h"

namespace ktm {

nlohmann::json MigrationReportJson(const MigrationReport& r) {
  nlohmann::json j = {
      {"session", r.session},
      {"image_bytes", r.image_size},
      {"page_size", r.page_size},
      {"iterations", r.iterations},
      {"pages", r.pages},
      {"zero_pages", r.zero_pages},
      {"data_bytes", r.data_bytes},
      {"seconds", r.seconds},
      {"transfer_seconds", r.transfer_seconds},
      {"throughput_gbps", r.seconds > 0 ? r.data_bytes / r.seconds / 1e9 : 0},
      {"image_digest", r.digest},
      {"digest_algorithm", std::string(DigestName(r.digest_algorithm))},
      {"dirty_per_iteration", r.dirty_per_iteration},
  };
  nlohmann::json phases = nlohmann::json::array();
  for (const auto& p : r.phases) {
    phases.push_back({{"name", p.name}, {"wall_s", p.wall_seconds}, {"cpu_user_s", p.cpu_user_seconds},
                      {"cpu_sys_s", p.cpu_sys_seconds}});
  }
  j["phases"] = std::move(phases);
  if (r.downtime.measured) {
    const DowntimeReport& d = r.downtime;
    j["downtime"] = {{"total_s", d.total_seconds},         {"expected_final_pages_s", d.expected_seconds},
                     {"final_pages", d.final_pages},       {"final_pages_s", d.final_pages_seconds},
                     {"digest_s", d.digest_seconds},       {"confirm_s", d.confirm_seconds}};
  }
  nlohmann::json chans = nlohmann::json::array();
  for (size_t i = 0; i < r.channels.size(); ++i) {
    const auto& c = r.channels[i];
    nlohmann::json cj = {{"id", i}, {"ktls", c.ktls}, {"zero_copy", c.zero_copy}, {"path", c.path}};
    const ChannelStats& st = c.stats;
    if (st.has_zero_copy_counters) {
      cj["zc_sends"] = st.zc.sends;
      cj["zc_released"] = st.zc.released;
      cj["zc_zero_copied"] = st.zc.zero_copied;
      cj["zc_copied"] = st.zc.copied;
      cj["zc_notifications"] = st.zc.completion_records;
      cj["zc_enobufs_retries"] = st.zc.enobufs_retries;
      cj["backend"] = st.backend;
      cj["fixed_sends"] = st.fixed_sends;
    }
    if (st.records_batched) cj["tls_batches"] = st.records_batched;
    if (st.session_tickets_ignored) cj["session_tickets_ignored"] = st.session_tickets_ignored;
    if (st.rekey.applies) {
      // TLS key lifetime: updates each way, the limit in force (bytes 0:
      // none), and whether the send key can change (why not, if not).
      cj["rekey"] = {{"sent", st.rekey.sent},
                     {"received", st.rekey.received},
                     {"limit_records", st.rekey.limit_records},
                     {"limit_bytes", st.rekey.limit_bytes},
                     {"possible", st.rekey.can_rekey},
                     {"detail", st.rekey.detail}};
      cj["rx_no_pad"] = st.rx_no_pad;
      cj["rx_no_pad_detail"] = st.rx_no_pad_detail;
    }
    chans.push_back(std::move(cj));
  }
  j["channels"] = std::move(chans);
  return j;
}

}  // namespace ktm
