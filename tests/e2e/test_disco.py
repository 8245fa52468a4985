"""Service discovery on the account (XEP-0313 §6.1, XEP-0359 §5)."""

from conftest import NS_DISCO_INFO, NS_MAM, NS_MAM_EXT, NS_SID, q


async def account_features(server, connect):
    (u,) = server.take_users(1)
    client = await connect(server, u)
    reply = await client.iq("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=client.bare)
    query = reply.find(q(NS_DISCO_INFO, "query"))
    assert query is not None
    return [f.get("var") for f in query.findall(q(NS_DISCO_INFO, "feature"))]


async def test_disco_info_on_the_account_lists_mam_2_and_stanza_ids_once_each(server, connect):
    features = await account_features(server, connect)
    assert features.count(NS_MAM) == 1
    assert features.count(NS_SID) == 1


async def test_disco_info_on_the_account_lists_mam_2_extended(server, connect):
    # Not native_only: stock advertises it too with internal storage (caps full_id_range + ids),
    # so the before-id/after-id/ids tests in test_queries.py run on both.
    features = await account_features(server, connect)
    assert features.count(NS_MAM_EXT) == 1
