use crate::support::*;

#[tokio::test]
async fn two_users_reviewing_one_product_at_once_both_succeed() {
    let app = TestApp::spawn().await;
    let product = app.create_product("owner", "Kettle").await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));

    let (a, b) = tokio::join!(
        app.graphql_as(&alice, ADD_REVIEW, review_input(&product, 5)),
        app.graphql_as(&bob, ADD_REVIEW, review_input(&product, 1)),
    );
    data(&a);
    data(&b);
    assert_eq!(app.count_rows("reviews").await, 2);
}

#[tokio::test]
async fn one_user_reviewing_twice_at_once_gets_one_review_and_one_conflict() {
    let app = TestApp::spawn().await;
    let token = app.token("alice");
    for round in 0..5 {
        let product = app.create_product("owner", &format!("p{round}")).await;
        let (a, b) = tokio::join!(
            app.graphql_as(&token, ADD_REVIEW, review_input(&product, 5)),
            app.graphql_as(&token, ADD_REVIEW, review_input(&product, 4)),
        );
        let mut codes: Vec<String> = [&a, &b]
            .iter()
            .map(|r| {
                if r.get("errors").is_some() {
                    error_code(r)
                } else {
                    "OK".into()
                }
            })
            .collect();
        codes.sort();
        assert_eq!(codes, ["CONFLICT", "OK"], "round {round}");
    }
    assert_eq!(app.count_rows("reviews").await, 5);
}
