#include "tls/tls_session.h"


namespace ktm {

std::unique_ptr<Channel> TlsSession::UserspaceChannel(std::unique_ptr<TlsSession> session, std::string why) {
  TlsSession* s = session.get();
  return s->MakeRecordChannel(std::move(session), std::move(why));
}

}  // namespace ktm
